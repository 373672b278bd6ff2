"""The container every text loader returns: texts, integer labels and the class names."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass
class TextClassificationData:
    """A labelled text classification dataset, as read from its published files.

    ``texts[i]`` has class ``labels[i]``, an index into ``class_names``. ``class_groups`` maps a
    group name to the class ids it holds (CLINC150's 10 domains, for example) and is empty when a
    dataset has no such grouping. ``parts[i]`` names the published file part ``texts[i]`` came from
    (``"train"``, ``"test"``, ...), because few-shot use splits by class and pools the parts.
    ``class_descriptions`` holds a readable name per class when the files ship one (FewRel).
    """

    texts: list[str]
    labels: list[int]
    class_names: list[str]
    name: str = ""
    parts: list[str] = field(default_factory=list)
    class_groups: dict[str, list[int]] = field(default_factory=dict)
    class_descriptions: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if len(self.texts) != len(self.labels):
            raise ValueError(
                f"{len(self.texts)} texts but {len(self.labels)} labels: every text needs exactly "
                "one label."
            )
        if self.parts and len(self.parts) != len(self.texts):
            raise ValueError(
                f"{len(self.parts)} part names for {len(self.texts)} texts: give one per text or "
                "none."
            )
        num_classes = len(self.class_names)
        bad = [y for y in self.labels if not 0 <= y < num_classes]
        if bad:
            raise ValueError(
                f"label {bad[0]} is outside 0..{num_classes - 1} (there are {num_classes} class "
                "names): add the missing class name or fix the label."
            )

    @property
    def num_classes(self) -> int:
        """Number of classes (length of ``class_names``)."""
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.texts)

    def class_counts(self) -> list[int]:
        """Number of examples of each class, indexed by class id."""
        counts = [0] * self.num_classes
        for y in self.labels:
            counts[y] += 1
        return counts

    def indices_by_class(self) -> list[list[int]]:
        """For each class id, the positions of its examples, in file order."""
        groups: list[list[int]] = [[] for _ in range(self.num_classes)]
        for i, y in enumerate(self.labels):
            groups[y].append(i)
        return groups

    def texts_of(self, class_ids: Sequence[int]) -> list[str]:
        """The texts whose label is in ``class_ids``, in file order (for fitting a vocabulary)."""
        wanted = set(class_ids)
        unknown = sorted(c for c in wanted if not 0 <= c < self.num_classes)
        if unknown:
            raise ValueError(
                f"class ids {unknown} do not exist; this dataset has classes "
                f"0..{self.num_classes - 1}."
            )
        return [t for t, y in zip(self.texts, self.labels) if y in wanted]
