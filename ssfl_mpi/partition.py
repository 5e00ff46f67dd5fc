"""Splits of a labelled training set over K clients: iid, Dirichlet label skew, balanced Dirichlet, pathological."""

from __future__ import annotations

import numpy as np

from .errors import UsageError

PARTITIONERS = {}


def _register(name):
    def deco(fn):
        PARTITIONERS[name] = fn
        return fn
    return deco


def partition(name: str, labels: np.ndarray, *, n_clients: int, rng: np.random.Generator,
              alpha: float = 0.3, classes_per_client: int = 2, groups: np.ndarray | None = None) -> list[np.ndarray]:
    """Indices into `labels` for each client, each sorted ascending. `groups` is the natural client
    of each sample (writer, role) where the data set has one."""
    labels = np.asarray(labels)
    if len(labels) < n_clients:
        raise UsageError(f"{len(labels)} training samples cannot be split over {n_clients} clients")
    parts = PARTITIONERS[name](labels, n_clients=n_clients, rng=rng, alpha=alpha,
                               classes_per_client=classes_per_client, groups=groups)
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


@_register("natural")
def natural(labels, *, n_clients, groups, **_):
    """One client per natural group (LEAF writer or role): clients 0..K-1 are groups 0..K-1."""
    if groups is None:
        raise UsageError("--partition natural needs a data set with natural clients (femnist, shakespeare)")
    n_groups = int(groups.max()) + 1 if len(groups) else 0
    if n_clients > n_groups:
        raise UsageError(f"--clients {n_clients}: the data hold only {n_groups} natural clients (writers or "
                         f"roles); use --clients {n_groups} or fewer")
    order = np.argsort(groups, kind="stable")
    bounds = np.searchsorted(groups[order], np.arange(n_clients + 1))
    return [order[bounds[k]: bounds[k + 1]] for k in range(n_clients)]


def split_for(cfg, ds) -> list[np.ndarray]:
    """The clients' sample indices a run with config `cfg` uses on data set `ds` (every rank, the
    benchmarks and the plain yardstick derive them the same way)."""
    from .seeding import np_rng

    return partition(cfg.partition_scheme, ds.train_labels, n_clients=cfg.clients, rng=np_rng(cfg.seed, "partition"),
                     alpha=cfg.alpha, classes_per_client=cfg.classes_per_client, groups=ds.train_groups)


def balanced_sizes(n: int, n_clients: int) -> np.ndarray:
    """n/K each, remainder to the first clients."""
    sizes = np.full(n_clients, n // n_clients, dtype=np.int64)
    sizes[: n % n_clients] += 1
    return sizes


@_register("iid")
def iid(labels, *, n_clients, rng, **_):
    perm = rng.permutation(len(labels))
    return np.split(perm, np.cumsum(balanced_sizes(len(labels), n_clients))[:-1])


@_register("dirichlet")
def dirichlet(labels, *, n_clients, rng, alpha, **_):
    """Label skew: each class is split among clients by proportions drawn from Dir(alpha)."""
    classes = np.unique(labels)
    min_size = max(1, min(10, len(labels) // (2 * n_clients)))
    for _attempt in range(1000):
        parts = [[] for _ in range(n_clients)]
        for c in classes:
            pool = rng.permutation(np.flatnonzero(labels == c))
            props = rng.dirichlet(np.full(n_clients, alpha))
            cuts = (np.cumsum(props)[:-1] * len(pool)).astype(np.int64)
            for k, chunk in enumerate(np.split(pool, cuts)):
                parts[k].append(chunk)
        parts = [np.concatenate(p) for p in parts]
        # Redraw rather than patch: a patched split is no longer a Dirichlet draw.
        if min(len(p) for p in parts) >= min_size:
            return parts
    raise UsageError(f"dirichlet partition with alpha={alpha} left a client with fewer than "
                     f"{min_size} samples after 1000 draws: raise --alpha or lower --clients")


@_register("dirichlet-balanced")
def dirichlet_balanced(labels, *, n_clients, rng, alpha, **_):
    """The SSFL reference split: n/K samples per client, class mix drawn from each client's Dir(alpha) prior."""
    classes = np.unique(labels)
    n_classes = len(classes)
    pools = [list(rng.permutation(np.flatnonzero(labels == c))) for c in classes]
    remaining = np.array([len(p) for p in pools], dtype=np.float64)
    priors = rng.dirichlet(np.full(n_classes, alpha), size=n_clients)
    slots = rng.permutation(np.repeat(np.arange(n_clients), balanced_sizes(len(labels), n_clients)))
    parts = [[] for _ in range(n_clients)]
    for k in slots:
        weights = priors[k] * (remaining > 0)
        total = weights.sum()
        if total <= 0:  # this client's prior puts no mass on any class left: fall back to what is left
            weights, total = remaining.copy(), remaining.sum()
        c = int(np.searchsorted(np.cumsum(weights), rng.random() * total, side="right"))
        c = min(c, n_classes - 1)
        while remaining[c] == 0:  # guard against a float edge at the top of the cumsum
            c -= 1
        parts[k].append(pools[c].pop())
        remaining[c] -= 1
    return parts


@_register("pathological")
def pathological(labels, *, n_clients, rng, classes_per_client, **_):
    """Each client holds `classes_per_client` classes, the same number of samples from each."""
    classes = np.unique(labels)
    c = classes_per_client
    if c > len(classes):
        raise UsageError(f"--classes-per-client ({c}) exceeds the {len(classes)} classes of the data set")
    order = rng.permutation(len(classes))
    # Consecutive slots of a cycle over a permutation are distinct classes, and every class is
    # held by the same number of clients (give or take one).
    held = [[int(order[(k * c + j) % len(classes)]) for j in range(c)] for k in range(n_clients)]
    holders = np.bincount(np.concatenate(held), minlength=len(classes))
    pools = [rng.permutation(np.flatnonzero(labels == cls)) for cls in classes]
    quota = min(len(labels) // (n_clients * c),
                min(len(pools[i]) // holders[i] for i in range(len(classes)) if holders[i]))
    if quota < 1:
        raise UsageError("pathological partition: too few samples per class for "
                         f"{n_clients} clients x {c} classes")
    taken = np.zeros(len(classes), dtype=np.int64)
    parts = []
    for k in range(n_clients):
        mine = []
        for i in held[k]:
            mine.append(pools[i][taken[i]: taken[i] + quota])
            taken[i] += quota
        parts.append(np.concatenate(mine))
    return parts


def label_counts(labels: np.ndarray, parts: list[np.ndarray], n_classes: int) -> np.ndarray:
    return np.stack([np.bincount(labels[p], minlength=n_classes) for p in parts]).astype(np.int64)


def proportional_test_split(test_labels: np.ndarray, train_counts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Owner client of every test sample: each class's test samples are dealt to clients in
    proportion to how many training samples of that class they hold (largest remainder), so a
    client's test split follows its training label distribution. Disjoint; covers the test set."""
    test_labels = np.asarray(test_labels)
    owner = np.empty(len(test_labels), dtype=np.int64)
    for c in range(train_counts.shape[1]):
        idx = rng.permutation(np.flatnonzero(test_labels == c))
        share = train_counts[:, c].astype(np.float64)
        if share.sum() == 0:  # no client trains on this class: spread it evenly
            share = np.ones_like(share)
        quota = share / share.sum() * len(idx)
        counts = np.floor(quota).astype(np.int64)
        rest = len(idx) - counts.sum()
        counts[np.argsort(-(quota - counts), kind="stable")[:rest]] += 1
        owner[idx] = np.repeat(np.arange(len(counts)), counts)
    return owner
