"""The Debian packages the demo data is made from: the one list, with each package's role
and licence. ``make demo-data`` installs what ``python3 tools/demodata/packages.py`` prints
(stdlib only, so it runs before the virtual environment exists).

Music packages were checked for music (bookworm): ``neverball-data`` holds none (its
soundtrack is in ``neverball-common``, which issue 20 does not allow for training), the
others do; ``lincity-ng-data`` has only three tracks.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass

MUSIC = "accompaniment (music)"
SPEECH = "vocals (speech synthesis)"
RECORDED = "vocals (recorded human speech)"
SUNG = "vocals (sampled choir and voices, rendered from generated melodies)"
TEXT = "texts read by the voices"


@dataclass(frozen=True)
class Package:
    name: str
    role: str
    licence: str  # summary of /usr/share/doc/<name>/copyright (Debian bookworm)


PACKAGES = (
    Package("warzone2100-music", MUSIC, "GPL-2+ (Warzone 2100 Project; the music falls under `Files: *`)"),
    Package("wesnoth-1.16-music", MUSIC, "GPL-2+ (Battle for Wesnoth project)"),
    Package("supertux-data", MUSIC, "GPL-2+ for `data/music/*` (Marek Moeckel); the rest GPL-3+ and others"),
    Package("lincity-ng-data", MUSIC, "GPL-2+ (`Files: *`)"),
    Package("xmoto-data", MUSIC, "GPL-2+ (`Files: *`)"),
    Package("widelands-data", MUSIC, "GPL-2+; `ingame_24..26.ogg` CC-BY-SA-3.0 (Stuart Marshall)"),
    Package("megaglest-data", MUSIC, "CC-BY-SA-3.0 (Glest Team and the faction authors named there)"),
    Package("extremetuxracer-data", MUSIC, "GPL-2+ (`Files: *`)"),
    Package("espeak-ng", SPEECH, "GPL-3+ (eSpeak NG)"),
    Package("flite", SPEECH, "CMU Flite licence (BSD-like, free use with notice); a few files public domain / GPL"),
    Package("festival", SPEECH, "CSTR/University of Edinburgh licence (BSD-like, free use with notice)"),
    Package("festvox-kallpc16k", SPEECH, "Festvox/CMU licence (BSD-like, free use with notice; Black & Lenzo)"),
    Package("festvox-us-slt-hts", SPEECH, "BSD-3-clause + CMU ARCTIC/EST (BSD-like) licences"),
    Package("festlex-cmu", SPEECH, "CSTR/University of Edinburgh licence (BSD-like), from CMUdict"),
    Package("festlex-poslex", SPEECH, "CSTR/University of Edinburgh licence (BSD-like)"),
    Package("warzone2100-data", RECORDED, "GPL-2+ (Eidos Interactive 1999-2004, `Files: *`)"),
    Package("fluid-soundfont-gm", SUNG, "MIT (Frank Wen, Toby Smithe)"),
    Package("fluidsynth", SUNG, "LGPL-2.1+ (the renderer; its output carries no licence of its own)"),
    Package("fortunes-min", TEXT, "BSD (UC Berkeley, advertising clause rescinded)"),
    Package("fortunes", TEXT, "BSD (UC Berkeley); quotations belong to their authors"),
)
NAMES = tuple(p.name for p in PACKAGES)
MUSIC_PACKAGES = tuple(p.name for p in PACKAGES if p.role == MUSIC)
TEXT_PACKAGES = tuple(p.name for p in PACKAGES if p.role == TEXT)


def dpkg_files(pkg: str) -> list[str]:
    """Paths a package installed (empty when it is not installed)."""
    try:
        out = subprocess.run(["dpkg", "-L", pkg], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return []
    return out.splitlines()


def missing_tools() -> list[str]:
    """The Debian package tools this one runs that are not on PATH (not a Debian-based system)."""
    return [t for t in ("dpkg", "dpkg-query") if shutil.which(t) is None]


def missing_packages(packages=NAMES) -> list[str]:
    if missing_tools():  # nothing can be installed here (the tests skip on this)
        return list(packages)
    missing = []
    for p in packages:
        r = subprocess.run(["dpkg", "-s", p], capture_output=True, text=True)
        if r.returncode != 0 or "Status: install ok installed" not in r.stdout:
            missing.append(p)
    return missing


def package_version(pkg: str) -> str:
    r = subprocess.run(["dpkg-query", "-W", "-f=${Version}", pkg], capture_output=True, text=True)
    return r.stdout.strip() if r.returncode == 0 else "not installed"


if __name__ == "__main__":
    print(" ".join(NAMES))
    sys.exit(0)
