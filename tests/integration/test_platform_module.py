"""`platform/` is a source folder, never the importable `platform`: the standard library module
must win from the repo root and inside Ray workers (DESIGN.md, "Decisions already made")."""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import ray

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
STDLIB = str(Path(sysconfig.get_paths()["stdlib"]).resolve())

PROBE = (
    "import json, platform; "
    "print(json.dumps({'system': platform.system(), 'file': getattr(platform, '__file__', None), "
    "'has_system': hasattr(platform, 'system')}))"
)


def expected_system() -> str:
    import platform

    return platform.system()


def assert_stdlib_platform(found: dict) -> None:
    assert found["has_system"] is True, found
    assert found["system"] == expected_system(), found
    assert found["file"] is not None, found  # a namespace package (the repo's folder) has no __file__
    path = Path(found["file"]).resolve()
    assert str(path).startswith(STDLIB), found
    assert REPO_ROOT not in path.parents, found


def test_repo_folder_is_not_a_package():
    assert (REPO_ROOT / "platform").is_dir()
    assert not (REPO_ROOT / "platform" / "__init__.py").exists()


def test_platform_from_the_repo_root():
    # `python -c` puts the current directory first on sys.path: the repo's platform/ is seen first.
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert_stdlib_platform(json.loads(done.stdout.strip().splitlines()[-1]))


def test_platform_from_the_repo_root_with_switchboard_imported():
    probe = "import switchboard.local, switchboard.gateway.app; " + PROBE
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert_stdlib_platform(json.loads(done.stdout.strip().splitlines()[-1]))


def test_platform_inside_a_ray_task(sb):
    repo_root = str(REPO_ROOT)

    @ray.remote(num_cpus=0)
    def probe():
        import importlib
        import os
        import platform
        import sys

        plain = {"system": platform.system(), "file": getattr(platform, "__file__", None),
                 "has_system": hasattr(platform, "system")}
        # Again with the repo root first on sys.path and as the working directory, the way a worker
        # started from a checkout sees it: a fresh import must still find the standard library.
        saved_module, saved_cwd = sys.modules.pop("platform"), os.getcwd()
        sys.path.insert(0, repo_root)
        os.chdir(repo_root)
        try:
            fresh = importlib.import_module("platform")
            from_root = {"system": fresh.system(), "file": getattr(fresh, "__file__", None),
                         "has_system": hasattr(fresh, "system")}
        finally:
            sys.path.remove(repo_root)
            os.chdir(saved_cwd)
            sys.modules["platform"] = saved_module
        return plain, from_root

    plain, from_root = ray.get(probe.remote(), timeout=60)
    assert_stdlib_platform(plain)
    assert_stdlib_platform(from_root)


def test_platform_inside_a_ray_actor(sb):
    @ray.remote(num_cpus=0)
    class Probe:
        def system(self):
            import platform

            return {"system": platform.system(), "file": getattr(platform, "__file__", None),
                    "has_system": hasattr(platform, "system")}

    actor = Probe.remote()
    try:
        assert_stdlib_platform(ray.get(actor.system.remote(), timeout=60))
    finally:
        ray.kill(actor)


def test_platform_inside_the_platform_actors(sb):
    """The shards and the router are themselves Ray workers running switchboard code: alive and
    answering means their `import platform` (done by Ray, SQLAlchemy) worked."""
    from switchboard.actors import registry

    router = ray.get_actor(registry.router_name("local"), namespace=sb.settings.namespace)
    stats = ray.get(router.stats.remote(), timeout=30)
    assert [s["index"] for s in stats] == [0, 1]
