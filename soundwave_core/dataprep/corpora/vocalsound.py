"""VocalSound in its own layout."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from swv.core.errors import InputError
from swv.dataprep.corpora.base import CorpusEntry, CorpusLayout

#: VocalSound's file-name labels and the words used for them in manifests.
VOCALSOUND_LABELS = {
    "laughter": "laughter", "sigh": "sigh", "cough": "cough",
    "throatclearing": "throat clearing", "sneeze": "sneeze", "sniff": "sniff",
}


class VocalSoundLayout(CorpusLayout):
    """``<root>/audio_16k/<spk>_<n>_<label>.wav`` (the label is the file name's last part); with
    ``--split te|tr|val`` only the files listed in ``<root>/datafiles/<split>.json``.
    ``task: vocal_sound``, ``label`` (e.g. ``throat clearing``)."""

    def entries(self, source: Path) -> Iterator[CorpusEntry]:
        audio_dir = source / "audio_16k"
        if not audio_dir.is_dir():
            raise InputError(f"{audio_dir}: VocalSound audio folder not found")
        names, where = self._names(source, audio_dir)
        for name in names:
            parts = Path(name).stem.split("_")
            if len(parts) != 3 or parts[2] not in VOCALSOUND_LABELS:
                raise InputError(f"{where}: {name}: expected <speaker>_<n>_<label>.wav with a label among "
                                 f"{', '.join(VOCALSOUND_LABELS)}")
            fields = {"id": Path(name).stem, "label": VOCALSOUND_LABELS[parts[2]], "task": "vocal_sound",
                      "speaker": parts[0]}
            yield f"{where}: {name}", audio_dir / name, fields

    def _names(self, source: Path, audio_dir: Path) -> tuple[list[str], str]:
        """The split's file names (every file without ``--split``) and where they are listed."""
        if self.config.split is None:
            return sorted(p.name for p in audio_dir.glob("*.wav")), str(audio_dir)
        listing = source / "datafiles" / f"{self.config.split}.json"
        if not listing.is_file():
            raise InputError(f"{listing}: VocalSound split file not found (splits: te, tr, val)")
        try:
            data = json.loads(listing.read_text(encoding="utf-8"))["data"]
            return [Path(item["wav"]).name for item in data], str(listing)
        except (ValueError, KeyError, TypeError) as exc:
            raise InputError(f"{listing}: expected {{\"data\": [{{\"wav\": ...}}, ...]}} ({exc})") from None
