"""DownloadSpec: which Hub model (and revision) to fetch; the YAML file, the CLI and the form."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from core.hub import HubError, check_revision
from core.models import ModelSource
from core.runs.spec import RunSpec, meta


@dataclass
class DownloadSpec(RunSpec):
    kind: ClassVar[str] = "download"

    model: dict = field(default_factory=dict, metadata=meta("The Hub model, as a core.models source: {kind: hub, ref: org/name, revision: "
                                                            "..., trust_remote_code: ...}."))
    name: str = field(default="", metadata=meta("A label for the run folder (optional)."))

    def __post_init__(self) -> None:
        super().__post_init__()

        try:
            source = ModelSource.from_dict(self.model)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"model: {exc}") from None
        if source.kind != "hub":
            raise ValueError(f"model: only Hub models are downloaded; {source.label} is a {source.kind} source")
        try:
            check_revision(source.revision)
        except HubError as exc:
            raise ValueError(f"model.revision: {exc}") from None

    @property
    def source(self):
        return ModelSource.from_dict(self.model)
