"""The command line's dispatch: each command imported only when it runs, a clear error
when matplotlib is missing, and a library core that never imports the presentation wing."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from c2rope.cli.main import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _python(code: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter on this checkout's c2rope (`-c` puts the
    working directory first on sys.path)."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def test_info(capsys):
    assert main(["info"]) == 0
    text = capsys.readouterr().out
    assert f"torch {torch.__version__}" in text and "OpenMP max threads:" in text


@pytest.mark.parametrize("argv", [[], ["bogus"], ["--nope"]])
def test_bad_command_exits_2(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "usage: c2rope" in capsys.readouterr().err


def test_help_lists_commands_and_options(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert all(name in text for name in ("demo", "info", "diagnose"))
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--help"])
    assert exc.value.code == 0
    assert "--paper-code" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main(["diagnose", "--bogus-option"])
    assert exc.value.code == 2
    assert "usage: c2rope diagnose" in capsys.readouterr().err


def test_python_dash_m():
    done = subprocess.run([sys.executable, "-m", "c2rope", "info"], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert "kernels: CPU" in done.stdout and os.path.join(ROOT, "c2rope") in done.stdout


def test_demo_and_info_survive_a_broken_diagnose(tmp_path):
    # sys.modules[name] = None makes `import name` raise ImportError.
    done = _python(f"""
        import sys
        sys.modules["c2rope.cli.diagnose"] = None
        from c2rope.cli.main import main
        assert main(["info"]) == 0
        assert main(["demo", "--out", {str(tmp_path)!r}]) == 0
        try:
            main(["diagnose"])
        except ImportError:
            print("diagnose: ImportError")
    """)
    assert done.returncode == 0, done.stderr
    assert "diagnose: ImportError" in done.stdout
    assert sorted(os.listdir(tmp_path)) == ["mask.png", "rings.png"]


def test_missing_matplotlib_names_the_extra(tmp_path):
    done = _python(f"""
        import sys
        sys.modules["matplotlib"] = None
        from c2rope.cli.main import main
        assert main(["info"]) == 0
        print("demo exit", main(["demo", "--out", {str(tmp_path / "demo")!r}]))
        print("diagnose exit", main(["diagnose", "--out", {str(tmp_path / "diag")!r}]))
    """)
    assert done.returncode == 0, done.stderr
    # The demo is the main job: it prints its numbers and says how to get the pictures.
    assert "demo exit 0" in done.stdout, done.stdout
    assert "Triplet positions" in done.stdout and "max |error| vs float64 reference" in done.stdout
    assert "No pictures" in done.stdout and "pip install 'c2rope[plots]'" in done.stdout
    # diagnose is all pictures and measures: it refuses before any work, naming the extra.
    assert "diagnose exit 1" in done.stdout
    errors = done.stderr.strip().splitlines()
    assert len(errors) == 1, done.stderr
    assert errors[0].startswith("c2rope diagnose: error:") and "pip install 'c2rope[plots]'" in errors[0]
    assert not os.listdir(tmp_path)  # nothing written


def test_library_core_never_imports_matplotlib_or_the_cli():
    # The core modules import, build a mask and rotate with matplotlib unavailable, and
    # none of them pulls in the presentation wing.
    done = _python("""
        import sys
        sys.modules["matplotlib"] = None
        import importlib
        import torch
        import c2rope
        core = ["config", "layout", "positions", "mask", "rotary", "circle", "mrope", "metrics", "_ops",
                "reference"]
        for name in core:
            importlib.import_module("c2rope." + name)
        try:
            import transformers  # noqa: F401
        except ImportError:
            pass
        else:
            importlib.import_module("c2rope.hf")._load_families()  # the families wing loads no cli either
        layout = c2rope.VisualLayout.from_spans([[(2, 3, 5)]], 20)
        mask = c2rope.chebyshev_mask(layout, c2rope.C2RoPEConfig())
        pos = c2rope.build_position_ids(layout, c2rope.C2RoPEConfig())
        rope = c2rope.C2RotaryEmbedding(dim=32)
        q = torch.randn(1, 2, 20, 32)
        cos, sin = rope(q, pos)
        c2rope.apply_rotary_pos_emb(q, q, cos, sin)
        wing = sorted(name for name, module in sys.modules.items()
                      if module is not None and name.startswith(("c2rope.cli", "matplotlib")))
        print("loaded:", wing, tuple(mask.shape))
    """)
    assert done.returncode == 0, done.stderr
    assert "loaded: [] (1, 1, 20, 20)" in done.stdout
