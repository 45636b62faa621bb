"""Write the GPT chapter's training text into the package: ``tformer/data/course_text.txt``.

    python scripts/build_course_text.py          # regenerate it from book/ and notebooks/
    python scripts/build_course_text.py --check  # exit 1 if the shipped copy is stale

``tformer.data.sources.course_text()`` reads this file, so an installed wheel (the course zip)
trains on the same text as a clone. ``tests/test_zip.py`` fails while the shipped copy is stale:
after editing any markdown in book/ or notebooks/, run this script (and re-execute chapter 10,
whose outputs depend on the text).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tformer.data.sources import COURSE_TEXT_FILE, course_text  # noqa: E402

TARGET = ROOT / "tformer" / "data" / COURSE_TEXT_FILE


def write_atomically(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the package file is world-readable
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="only report whether the copy is stale")
    args = p.parse_args(argv)
    fresh = course_text(ROOT)
    if args.check:
        stale = not TARGET.is_file() or TARGET.read_text(encoding="utf-8") != fresh
        print(f"{TARGET.relative_to(ROOT)} is {'STALE: run scripts/build_course_text.py' if stale else 'up to date'}")
        return 1 if stale else 0
    write_atomically(TARGET, fresh)
    print(f"wrote {TARGET.relative_to(ROOT)}: {len(fresh):,} characters")
    return 0


if __name__ == "__main__":
    sys.exit(main())
