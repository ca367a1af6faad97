"""The extension build, the op registry and the fallbacks."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import chimera.ops as ops
from chimera.ops import _extension, _registry, reference
from testutil import EXT_DISABLED

ROOT = Path(__file__).resolve().parents[1]
PUBLIC_OPS = sorted(_registry.schemas)


def run(args, env_extra=None, **kw):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHIMERA_")}
    env.update(env_extra or {})
    return subprocess.run(args, capture_output=True, text=True, env=env, cwd=ROOT, **kw)


def _parameters(fn):
    import inspect
    if isinstance(fn, torch._ops.OpOverload):
        return [a.name for a in fn._schema.arguments]
    return list(inspect.signature(fn).parameters)


def test_every_public_op_has_a_twin_with_the_same_signature():
    public = list(ops.OPS)
    assert set(PUBLIC_OPS) <= set(public) | {n for n in PUBLIC_OPS if n.endswith("_backward")} | {"codebook_lookup"}
    for name in public:
        assert _parameters(getattr(reference, name)) == _parameters(getattr(ops, name)), name


@pytest.mark.skipif(EXT_DISABLED, reason="extension disabled")
def test_extension_loads_and_every_op_runs_cpp_on_cpu():
    info = ops.extension_info()
    assert info["loaded"], info
    assert info["built_against_torch"] == torch.__version__
    assert set(ops.backend("cpu").values()) == {"cpp"}
    expected_cuda = "cuda" if info["with_cuda"] else "reference"
    assert set(ops.backend("cuda").values()) == {expected_cuda}


@pytest.mark.skipif(EXT_DISABLED, reason="extension disabled")
def test_python_schemas_equal_the_cpp_ones():
    for name in PUBLIC_OPS:
        cpp = getattr(torch.ops.chimera, name).default._schema
        py = torch._C.parse_schema("chimera::" + name + _registry.schemas[name])
        assert str(cpp) == str(py), name


def test_disabled_extension_runs_references():
    out = run([sys.executable, "-c", "import chimera.ops as o; print(sorted({v for b in o.backend().values() for v in b.values()}))"],
              {"CHIMERA_DISABLE_EXT": "1"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['reference']"


def test_require_and_disable_contradict():
    # An import error, with its traceback, as any import error: an application can catch it as
    # ImportError (a library must not exit the process or hide its callers), and it ends in the reason.
    env = {"CHIMERA_DISABLE_EXT": "1", "CHIMERA_REQUIRE_EXT": "true"}
    out = run([sys.executable, "-c", "import chimera.ops"], env)
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1] == ("chimera.ops._extension.ExtensionError: "
                                                   "CHIMERA_REQUIRE_EXT=1 and CHIMERA_DISABLE_EXT=1 contradict each other")
    caught = "try:\n    import chimera.ops\nexcept ImportError as e:\n    print(type(e).__name__)"
    out = run([sys.executable, "-c", caught], env)
    assert out.returncode == 0 and out.stdout.strip() == "ExtensionError", out.stderr


@pytest.mark.parametrize("value, on", [("1", True), ("true", True), (" Yes\n", True), ("ON", True), ("", False),
                                       ("0", False), ("false", False), ("no", False), ("off", False), ("2", False)])
def test_flag_parsing(monkeypatch, value, on):
    monkeypatch.setenv("CHIMERA_TEST_FLAG", value)
    assert _extension.flag("CHIMERA_TEST_FLAG") is on
    monkeypatch.delenv("CHIMERA_TEST_FLAG")
    assert _extension.flag("CHIMERA_TEST_FLAG") is False


def test_tests_read_the_disable_flag_as_the_loader_does():
    """testutil compared the variable with "1": CHIMERA_DISABLE_EXT=true disabled the extension
    but the tests that need it still ran."""
    code = (f"import sys; sys.path.insert(0, {str(ROOT / 'tests')!r}); import testutil; "
            "from chimera.ops import _extension; print(testutil.EXT_DISABLED, _extension.module is None)")
    for value, disabled in (("true", True), ("On", True), ("0", False)):
        out = run([sys.executable, "-c", code], {"CHIMERA_DISABLE_EXT": value})
        assert out.returncode == 0, out.stderr
        assert out.stdout.split() == [str(disabled), str(disabled or _extension.module is None)], value


def _fake_import(exc):
    def fake(name, *a, **k):
        if name == "chimera._C":
            raise exc
        return __import__(name)
    return fake


def test_missing_extension_warns_once_and_falls_back(monkeypatch):
    monkeypatch.delenv("CHIMERA_DISABLE_EXT", raising=False)
    monkeypatch.delenv("CHIMERA_REQUIRE_EXT", raising=False)
    monkeypatch.setattr(_extension.importlib, "import_module", _fake_import(ModuleNotFoundError("no", name="chimera._C")))
    with pytest.warns(RuntimeWarning, match="not built"):
        module, reason = _extension._load()
    assert module is None and "not built" in reason


def test_broken_extension_is_never_silent(monkeypatch):
    monkeypatch.delenv("CHIMERA_DISABLE_EXT", raising=False)
    monkeypatch.delenv("CHIMERA_REQUIRE_EXT", raising=False)
    broken = ImportError("_C.so: undefined symbol: _ZN3c104cuda9SetDeviceEi")
    monkeypatch.setattr(_extension.importlib, "import_module", _fake_import(broken))
    with pytest.warns(RuntimeWarning, match="undefined symbol"):
        module, _ = _extension._load()
    assert module is None
    monkeypatch.setenv("CHIMERA_REQUIRE_EXT", "1")
    with pytest.raises(_extension.ExtensionError, match="undefined symbol"):
        _extension._load()


def test_kernel_tests_pass_on_the_references():
    """The op test modules, again with CHIMERA_DISABLE_EXT=1 (every op on its twin)."""
    files = sorted(str(p) for p in (ROOT / "tests").glob("test_*.py")
                   if p.name.startswith(("test_affinity", "test_codebook", "test_signal")) and "cuda" not in p.name)
    out = run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *files],
              {"CHIMERA_DISABLE_EXT": "1"}, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]


def test_chimera_info_lists_every_op():
    out = run([sys.executable, "-m", "chimera", "info"])
    assert out.returncode == 0, out.stderr
    for name in PUBLIC_OPS:
        assert name in out.stdout
    assert f"torch   {torch.__version__}" in out.stdout
    if not EXT_DISABLED:
        assert f"built against torch {torch.__version__}" in out.stdout


@pytest.mark.skipif(EXT_DISABLED, reason="inspects the built extension")
def test_kernels_are_built_with_openmp():
    """at::parallel_for is inline in ATen's headers and compiles to a serial loop without
    -fopenmp: the CPU kernels would then ignore torch's thread count. The built library must
    call into libgomp (torch's copy, the only OpenMP runtime in the process)."""
    if not torch.backends.openmp.is_available():
        pytest.skip("this torch has no OpenMP")
    symbols = subprocess.run(["nm", "-D", "--undefined-only", _extension.module.__file__], capture_output=True,
                             text=True, check=True)
    assert "GOMP_parallel" in symbols.stdout
    loaded = {line.split()[-1] for line in Path("/proc/self/maps").read_text().splitlines() if "libgomp" in line}
    assert len(loaded) == 1, loaded
