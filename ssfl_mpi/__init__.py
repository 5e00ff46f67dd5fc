"""ssfl-mpi: Salient Sparse Federated Learning and its baselines over MPI."""

__version__ = "0.1.0"
