"""The `download` job: a Hub model's weights into the Hub cache, with bytes / speed / ETA, a disk-space check first,
resume after an interruption, and one clear sentence for a gated or unknown model. Other jobs call
`ensure_weights` so that a model not downloaded yet is fetched as their first stage."""
from core.download.job import ensure_weights, run
from core.download.spec import DownloadSpec

__all__ = ["DownloadSpec", "ensure_weights", "run"]
