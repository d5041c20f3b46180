"""PEP 517 backend for cider: maturin, after pointing cider-core's build script at the MLX
headers and libmlx of *this* build environment (the `mlx` pinned in build-system.requires).

cider-core's build.rs otherwise looks for MLX through $CIDER_PYTHON, $VIRTUAL_ENV, the
workspace .venv or `python3` on PATH, none of which is guaranteed to be the interpreter pip
set up for the build. MLX_DIR is a stable symlink under target/ named after the MLX version,
so repeated builds stay incremental (the path cargo sees does not change with pip's temporary
build folder) while a different MLX version rebuilds. An MLX_DIR set by the caller wins.
"""

from __future__ import annotations

import os
import sysconfig
from importlib import metadata
from pathlib import Path

import maturin
from maturin import (  # noqa: F401  (re-exported PEP 517 hooks)
    build_sdist,
    get_requires_for_build_editable,
    get_requires_for_build_sdist,
    get_requires_for_build_wheel,
    prepare_metadata_for_build_editable,
)

HERE = Path(__file__).resolve().parent.parent


def _mlx_dir() -> Path:
    import mlx

    for p in mlx.__path__:
        if (Path(p) / "include" / "mlx" / "mlx.h").exists():
            return Path(p)
    raise RuntimeError(
        "the build environment's `mlx` has no include/mlx/mlx.h; on Linux it comes with "
        "mlx[cpu] (or mlx[cuda12] / mlx[cuda13]), on macOS with mlx"
    )


def _point_at_mlx() -> None:
    if os.environ.get("MLX_DIR"):
        return
    src = _mlx_dir()
    target = Path(os.environ.get("CARGO_TARGET_DIR") or HERE / "target")
    link = target / "mlx" / metadata.version("mlx")
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        if link.resolve() == src.resolve():
            os.environ["MLX_DIR"] = str(link)
            return
        link.unlink()
    link.symlink_to(src, target_is_directory=True)
    os.environ["MLX_DIR"] = str(link)


def _find_maturin() -> None:
    # maturin's hooks run the `maturin` executable from PATH. pip's isolated build puts it
    # there; with --no-build-isolation from a venv that is not activated it is only in the
    # interpreter's scripts folder, so look there last.
    scripts = sysconfig.get_path("scripts")
    os.environ["PATH"] = os.environ.get("PATH", "") + os.pathsep + scripts


def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):  # type: ignore[no-untyped-def]
    _find_maturin()
    return maturin.prepare_metadata_for_build_wheel(metadata_directory, config_settings)


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):  # type: ignore[no-untyped-def]
    _find_maturin()
    _point_at_mlx()
    return maturin.build_wheel(wheel_directory, config_settings, metadata_directory)


def build_editable(wheel_directory, config_settings=None, metadata_directory=None):  # type: ignore[no-untyped-def]
    _find_maturin()
    _point_at_mlx()
    return maturin.build_editable(wheel_directory, config_settings, metadata_directory)
