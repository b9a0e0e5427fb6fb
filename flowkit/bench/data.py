"""The images a suite needs, loaded once per run (and shipped once to each worker)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from flowkit.bench.suite import CLASS_PROTOCOLS, Cell, Suite, target_dataset
from flowkit.data.base import ImageSet, match_channels
from flowkit.data.protocols import (
    Split,
    labelled_split,
    leave_one_class_out,
    one_class,
    out_of_distribution,
)
from flowkit.errors import ConfigError
from flowkit.registry import datasets, parse_spec

__all__ = ["BenchData", "load_bench_data"]


@dataclass
class BenchData:
    """The images a suite needs, loaded once."""

    data: ImageSet | None = None  # loo: all images; ood: the in-distribution train split
    test_in: ImageSet | None = None  # ood only
    out: dict[str, ImageSet] | None = None  # ood only
    given: dict[str, ImageSet] | None = None  # given: each target's images (train + test)

    @property
    def n_classes(self) -> int:
        assert self.data is not None
        return len(self.data.classes)

    def targets(self, suite: Suite) -> list[int | str]:
        if suite.protocol == "given":
            assert self.given is not None
            return list(self.given)
        return suite.targets(n_classes=self.n_classes)

    @property
    def name(self) -> str | None:
        """The loaded data's own name (a folder's name for ``folder``), shown in reports."""
        return self.data.name if self.data is not None else None

    def input_shape(self) -> tuple[int, int, int]:
        some = self.data if self.data is not None else next(iter((self.given or {}).values()))
        return some.shape

    def split(self, cell: Cell) -> Split:
        if cell.protocol in CLASS_PROTOCOLS:
            assert self.data is not None
            by_class = leave_one_class_out if cell.protocol == "loo" else one_class
            return by_class(self.data, int(cell.target), seed=cell.seed)
        if cell.protocol == "given":
            assert self.given is not None
            return labelled_split(self.given[str(cell.target)])
        assert self.data is not None and self.test_in is not None and self.out is not None
        return out_of_distribution(self.data, self.test_in, self.out[str(cell.target)])

    def target_name(self, cell: Cell) -> str:
        if cell.protocol in CLASS_PROTOCOLS and self.data is not None:
            return self.data.classes[int(cell.target)]
        return str(cell.target)


def _given_categories(suite: Suite, root: Any) -> list[str]:
    """The categories of a ``given`` suite, discovering them for ``categories = ["all"]``
    through the dataset's declared ``categories(root)`` capability (its registry entry)."""
    if suite.categories != ["all"]:
        return suite.targets()
    name, opts = parse_spec(suite.dataset)
    lister = datasets.get(name).capabilities.get("categories")
    if lister is None:
        raise ConfigError(
            f"suite {suite.name}: dataset {name!r} has no categories to discover; "
            "list them in the suite's categories field"
        )
    found = list(lister(root))
    if not found:  # let the dataset say where its files belong
        datasets.create(name, root=root, split="all", image_size=suite.image_size, **opts)
        raise ConfigError(f"no {name} categories found under {root}")
    return found


def load_bench_data(suite: Suite, root: Any = None, download: bool = True) -> BenchData:
    def load(spec: str, split: str) -> ImageSet:
        # a dataset's own root= (an OOD set kept elsewhere) wins over the run's
        name, opts = parse_spec(spec)
        where = opts.pop("root", root)
        return datasets.create(
            name, root=where, split=split, image_size=suite.image_size, download=download, **opts
        )

    if suite.protocol in CLASS_PROTOCOLS:
        return BenchData(data=load(suite.dataset, "all"))
    if suite.protocol == "given":
        targets = _given_categories(suite, root)
        return BenchData(
            given={str(t): load(target_dataset(suite.dataset, "given", t), "all") for t in targets}
        )
    data = load(suite.dataset, "train")
    out = {}
    for name in suite.out_datasets:  # digits against a model of photographs come as RGB
        found = load(name, "test")
        out[name] = replace(found, images=match_channels(found.images, data.images.shape[1]))
    return BenchData(data=data, test_in=load(suite.dataset, "test"), out=out)
