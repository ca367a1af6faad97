"""`chimera predict` as a demanding user drives it: inputs named twice, outputs that cannot
be written, names whose extension says the format, a bad --device, Ctrl-C."""
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf

from test_separate import ROOT, model_file, noise, run_cli  # noqa: F401 (model_file: a fixture)


def wav(path, seconds=0.25, rate=8000, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, noise(1, int(seconds * rate), seed=seed).T, rate)
    return path


def everything_under(folder):
    return sorted(str(p.relative_to(folder)) for p in Path(folder).rglob("*"))


def test_an_input_named_twice_is_separated_once(tmp_path, model_file, capsys, one_thread, monkeypatch):
    monkeypatch.chdir(tmp_path)
    wav(tmp_path / "a.wav")
    out = run_cli(capsys, "predict", "a.wav", "./a.wav", "a.wav", "-n", model_file, "-o", "sep")
    assert out.returncode == 0, out.stderr
    assert everything_under(tmp_path / "sep") == ["a", "a/accompaniment.wav", "a/vocals.wav"]
    assert out.stdout.count("a.wav ->") == 1
    warnings = [ln for ln in out.stderr.splitlines() if ln.startswith("chimera:")]
    assert warnings == ["chimera: warning: ./a.wav: given more than once; separated once",
                        "chimera: warning: a.wav: given more than once; separated once"]


def test_two_sources_given_one_file_name_is_said_as_such(tmp_path, model_file, capsys, one_thread):
    a = wav(tmp_path / "a.wav")
    out = run_cli(capsys, "predict", a, "-n", model_file, "--output-files", tmp_path / "x.wav", tmp_path / "x.wav")
    assert out.returncode == 2
    assert out.stderr == f"chimera: error: {tmp_path / 'x.wav'}: would be written for two sources of {a} " \
                         "(give each source its own file)\n"


def test_an_out_folder_that_is_a_file_is_refused_once_before_any_work(tmp_path, model_file, capsys, one_thread):
    a, b = wav(tmp_path / "a.wav"), wav(tmp_path / "b.wav", seed=1)
    (tmp_path / "taken").write_text("a file")
    for out_dir in (tmp_path / "taken", tmp_path / "taken" / "sub"):
        out = run_cli(capsys, "predict", a, b, "-n", model_file, "-o", out_dir)
        assert out.returncode == 2 and out.stdout == ""
        lines = out.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"chimera: error: {tmp_path / 'taken'}: is a file, not a "
                                                       "folder (outputs such as "), lines
    assert (tmp_path / "taken").read_text() == "a file"


def test_a_folder_where_an_output_goes_is_refused_even_with_force(tmp_path, model_file, capsys, one_thread):
    a = wav(tmp_path / "a.wav")
    (tmp_path / "sep" / "a" / "vocals.wav").mkdir(parents=True)
    out = run_cli(capsys, "predict", a, "-n", model_file, "-o", tmp_path / "sep", "--force")
    assert out.returncode == 2
    assert out.stderr == f"chimera: error: {tmp_path / 'sep' / 'a' / 'vocals.wav'}: is a folder, not a file name\n"
    assert everything_under(tmp_path / "sep") == ["a", "a/vocals.wav"]  # nothing written, no partial file


def test_output_names_say_the_format_and_a_contradiction_is_refused(tmp_path, model_file, capsys, one_thread):
    a = wav(tmp_path / "a.wav")
    v, m = tmp_path / "v.flac", tmp_path / "m.flac"
    out = run_cli(capsys, "predict", a, "-n", model_file, "--output-files", v, m)
    assert out.returncode == 0, out.stderr
    assert sf.info(v).format == sf.info(m).format == "FLAC"
    out = run_cli(capsys, "predict", a, "-n", model_file, "-o", tmp_path / "sep", "--filename", "{track}_{stem}.mp3")
    assert out.returncode == 0, out.stderr
    assert sf.info(tmp_path / "sep" / "a_vocals.mp3").format == "MP3"
    out = run_cli(capsys, "predict", a, "-n", model_file, "--output-files", tmp_path / "v.aif", tmp_path / "m.AIF")
    assert out.returncode == 0, out.stderr  # another extension of a format: WAV data went into them
    assert sf.info(tmp_path / "v.aif").format == sf.info(tmp_path / "m.AIF").format == "AIFF"
    out = run_cli(capsys, "predict", a, "-n", model_file, "--format", "wav", "--output-files", tmp_path / "v.wav",
                  tmp_path / "m.ogg")
    assert out.returncode == 2
    assert out.stderr == f"chimera: error: {tmp_path / 'm.ogg'}: would hold wav data; give --format ogg or name " \
                         "it .wav\n"
    assert not (tmp_path / "v.wav").exists()



def test_an_output_that_is_an_input_is_refused_before_any_work_even_with_force(tmp_path, model_file, capsys,
                                                                              one_thread, monkeypatch):
    # through a symlink the input's file was replaced by its own vocals; another input named
    # as an output was replaced before it was read, and separated from that output
    from chimera.audio import AudioError
    from chimera.separate import Separator
    from test_separate import tiny_model

    monkeypatch.chdir(tmp_path)
    wav(tmp_path / "a.wav")
    wav(tmp_path / "a_vocals.wav", seed=1)
    (tmp_path / "link.wav").symlink_to("a.wav")
    before = {p: p.read_bytes() for p in tmp_path.glob("*.wav")}
    for argv, problem in (
            (["link.wav", "--output-files", "a.wav", "v.wav"], "a.wav: is the input link.wav (the same file); "
                                                               "an output would overwrite it"),
            (["a.wav", "--output-files", "a.wav", "v.wav"], "a.wav: is the input; an output would overwrite it"),
            (["a.wav", "a_vocals.wav", "-o", ".", "--filename", "{track}_{stem}.wav"],
             "a_vocals.wav: is an input; an output of a.wav would overwrite it")):
        out = run_cli(capsys, "predict", *argv, "-n", model_file, "--force")
        assert out.returncode == 2 and out.stdout == "" and out.stderr == f"chimera: error: {problem}\n", argv
    with pytest.raises(AudioError, match="link.wav: an output would overwrite the input"):
        Separator(tiny_model(), device="cpu").separate_file("link.wav", output_files=["a.wav", "v.wav"], force=True)
    assert {p: p.read_bytes() for p in tmp_path.glob("*.wav")} == before
    assert everything_under(tmp_path) == ["a.wav", "a_vocals.wav", "link.wav"]


def test_standard_input_is_said_and_spaces_and_unicode_are_names_like_any(tmp_path, model_file, capsys, one_thread,
                                                                          monkeypatch):
    monkeypatch.chdir(tmp_path)
    wav(tmp_path / "b c é.wav")
    out = run_cli(capsys, "predict", "b c é.wav", "-", "-n", model_file, "-o", "sép arés", "-q")
    assert out.returncode == 1  # "-" read "no such file"
    assert out.stderr == "chimera: error: -: standard input is not read (each input is read twice); save it to a " \
                         "file first\n"
    assert everything_under(tmp_path / "sép arés") == ["b c é", "b c é/accompaniment.wav", "b c é/vocals.wav"]


def test_a_gpu_past_the_last_is_one_line_before_any_work(tmp_path, model_file, capsys, monkeypatch):
    # cuda:N past the last GPU was a CUDA traceback once the model moved there
    import torch

    a = wav(tmp_path / "a.wav")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    out = run_cli(capsys, "predict", a, "-n", model_file, "-o", tmp_path / "sep", "-d", "cuda:3")
    assert out.returncode == 2 and out.stderr == "chimera: error: device cuda:3: this machine has 1 CUDA device(s)\n"
    assert not (tmp_path / "sep").exists()

@pytest.mark.parametrize("device", ["foo", "cuda:x"])
def test_a_device_torch_does_not_know_is_one_line(capsys, device):
    out = run_cli(capsys, "predict", "a.wav", "-d", device)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.splitlines()[-1] == f"chimera predict: error: argument -d/--device: {device!r} is not a " \
                                          "device; use auto, cpu, cuda or cuda:N"


def _own_group_with_default_sigint():  # as in a terminal, even when pytest runs with SIGINT ignored
    os.setpgrp()
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_is_one_line_exit_130_and_leaves_nothing(tmp_path, model_file):
    long = tmp_path / "long.wav"
    sf.write(long, noise(2, 8000 * 600).T, 8000)  # 10 minutes: still running when interrupted
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "chimera", "predict", str(long), "-n", str(model_file), "-o",
                             str(tmp_path / "sep")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT,
                            env=env, preexec_fn=_own_group_with_default_sigint)
    seen = b""
    while b"s of audio" not in seen:  # the progress bar: separating has begun
        chunk = proc.stderr.read1(4096)
        assert chunk, seen
        seen += chunk
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert err.decode().splitlines()[-1].endswith("chimera: error: interrupted") and b"Traceback" not in err
    assert not (tmp_path / "sep").exists()


def _help(capsys, command):
    out = run_cli(capsys, command, "--help")
    assert out.returncode == 0
    return " ".join(out.stdout.split())  # argparse's line breaks undone


def test_info_names_the_cpu_path_threads_and_bundled_model(capsys, monkeypatch, one_thread):
    from chimera import ops, pretrained

    monkeypatch.delenv("CHIMERA_CPU_CAPABILITY", raising=False)
    out = run_cli(capsys, "info")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "threads: 1 (torch's intra-op threads, which the CPU kernels and the references use; " \
           "OMP_NUM_THREADS sets them)" in lines
    model = lines.index("model: vocals_accompaniment (bundled, the default): vocals, accompaniment at 16000 Hz, "
                        "2.24 M parameters")
    assert lines[model + 1] == f"  {pretrained.model_path()}"
    if ops.cpu_capability() is None:
        return  # the references run: no CPU path to name
    best = ops.cpu_capability()
    assert f"CPU kernels: {best} path, the best this CPU and build run (this CPU and build: " in out.stdout
    monkeypatch.setenv("CHIMERA_CPU_CAPABILITY", "Default")  # as the extension read it when it loaded
    with ops.use_cpu_capability("default"):
        out = run_cli(capsys, "info")
    assert "CPU kernels: default path, chosen by CHIMERA_CPU_CAPABILITY=Default (" in out.stdout
    monkeypatch.setenv("CHIMERA_CPU_CAPABILITY", "sse9")  # refused by the extension, with a warning
    out = run_cli(capsys, "info")
    assert f"CPU kernels: {best} path, CHIMERA_CPU_CAPABILITY=sse9 not taken (" in out.stdout


def test_info_says_a_bundled_model_that_cannot_load_in_one_line(capsys, monkeypatch, tmp_path):
    from chimera import pretrained

    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"truncated")
    path_of = pretrained.model_path
    monkeypatch.setitem(pretrained.MODELS, "broken", "broken.pt")
    monkeypatch.setattr(pretrained, "model_path", lambda name=pretrained.DEFAULT:
                        str(broken) if name == "broken" else path_of(name))
    out = run_cli(capsys, "info")
    assert out.returncode == 0, out.stderr
    said = [ln for ln in out.stdout.splitlines() if ln.startswith("model: broken")]
    assert len(said) == 1 and said[0].startswith(f"model: broken (bundled): cannot be loaded — {broken}: cannot "
                                                 "be read as a checkpoint ("), out.stdout
    assert "model: vocals_accompaniment (bundled, the default): vocals, accompaniment" in out.stdout



def test_info_describes_the_model_named_and_refuses_a_bad_one_in_one_line(capsys, tmp_path, monkeypatch):
    import torch

    from chimera import pretrained
    from chimera.models import SeparationModel, preset, save_checkpoint

    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    four = preset("chimerapp", "small", hidden=16, layers=1, embedding_dim=4, n_sources=4,
                  stft=dict(sample_rate=44100, n_fft=256, hop_length=64), source_names=["drums", "bass", "other", "vocals"])
    save_checkpoint(tmp_path / "four.pt", SeparationModel(four))
    save_checkpoint(tmp_path / "dc.pt", SeparationModel(preset("dc", hidden=16, layers=1, stft=four.stft)))
    out = run_cli(capsys, "info", "-n", "four.pt")
    assert out.returncode == 0 and out.stderr == "", out.stderr
    lines = out.stdout.splitlines()
    at = lines.index("model: four.pt (checkpoint): drums, bass, other, vocals at 44100 Hz, 52,872 parameters")
    assert lines[at + 1] == f"  {tmp_path / 'four.pt'}" and not any("bundled" in ln for ln in lines)
    # the column heads over their columns (each was one character left of them)
    head = next(ln for ln in lines if ln.startswith("ops:"))
    row = lines[lines.index(head) + 1]
    op, cpu, cuda = row.split()
    assert head.index("cpu") == row.index(cpu, len(op) + 2) and head.index("cuda") == row.index(cuda, row.index(cpu) + 1)
    out = run_cli(capsys, "info", "--model", "dc.pt")
    assert "(no mask head: k-means)" in out.stdout and out.returncode == 0
    out = run_cli(capsys, "info", "-n", "vocals_accompaniment")
    assert "model: vocals_accompaniment (bundled, the default): vocals, accompaniment at 16000 Hz, 2.24 M " \
           f"parameters\n  {pretrained.model_path()}\n" in out.stdout
    (tmp_path / "folder.pt").mkdir()
    whole = (tmp_path / "four.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(whole[:len(whole) // 2])
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("not a model")
    for spec, why in (("folder.pt", "folder.pt: is a folder, not a checkpoint file"),
                      ("cut.pt", "cut.pt: cannot be read as a checkpoint (corrupt, truncated or not a torch file: "),
                      ("empty.pt", "empty.pt: cannot be read as a checkpoint (empty or truncated)"),
                      ("notes.txt", "notes.txt: cannot be read as a checkpoint (not a torch file)"),
                      ("missing.pt", "missing.pt: no such checkpoint file"),
                      ("drums", "no bundled model 'drums'; bundled: vocals_accompaniment"),
                      ("", "no bundled model ''; bundled: vocals_accompaniment")):
        out = run_cli(capsys, "info", "-n", spec)
        assert out.returncode == 2 and out.stdout == "", (spec, out)
        assert out.stderr.startswith(f"chimera: error: {why}") and out.stderr.count("\n") == 1, (spec, out.stderr)
    out = run_cli(capsys, "predict", "a.wav", "-n", "folder.pt")  # predict's --model: the same words
    assert out.returncode == 2 and out.stderr == "chimera: error: folder.pt: is a folder, not a checkpoint file\n"

def test_help_says_the_method_default_and_what_evaluate_quiet_keeps(capsys, tmp_path, one_thread):
    for command in ("predict", "evaluate"):
        assert "--method {mask,kmeans} mask head or k-means on DC embeddings (default: the mask head, k-means " \
               "for a model without one)" in _help(capsys, command)
    assert "-q, --quiet no progress bar or summary; errors only" in _help(capsys, "predict")
    assert "-q, --quiet no progress bar or list of files written; the results table and errors only" \
        in _help(capsys, "evaluate")
    pytest.importorskip("museval")
    track = tmp_path / "data" / "t0"
    track.mkdir(parents=True)
    for name, seed in (("vocals", 1), ("accompaniment", 2)):
        sf.write(track / f"{name}.wav", noise(2, 16000, seed=seed).T, 8000)
    sf.write(track / "mixture.wav", (noise(2, 16000, seed=1) + noise(2, 16000, seed=2)).T, 8000)
    out = run_cli(capsys, "evaluate", tmp_path / "data", "--oracle", "mixture", "-q", "--out", tmp_path / "r.json")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0].split() == ["source", "SDR", "SIR", "SAR", "ISR", "SI-SDR"]
    assert "wrote" not in out.stdout and out.stderr == ""


def test_the_docs_name_demo_data_splits_that_make_demo_data_writes():
    # README's evaluate examples named demo-data/musdb/test, which the data tool never writes

    from tools.demodata.tracks import SONG_SPLITS

    docs = [ROOT / "README.md", ROOT / "chimera" / "pretrained" / "README.md", ROOT / "examples" / "README.md"]
    named = {(d.name, m) for d in docs for m in re.findall(r"demo-data/musdb/([\w-]+)", d.read_text())}
    assert named and {m for _, m in named} <= set(SONG_SPLITS), sorted(named)


def test_every_chimera_command_line_of_the_readme_parses():
    # each `chimera ...` (or `torchrun ... -m chimera ...`) line of README.md's shell blocks
    # names subcommands and options the parser has, with values it takes
    import shlex

    from chimera.cli import build_parser

    lines = [ln.split("#")[0].strip()
             for block in re.findall(r"```sh\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
             for ln in block.splitlines()]
    commands = [shlex.split(ln[ln.index("chimera ") + len("chimera "):]) for ln in lines
                if ln.startswith("chimera ") or (ln.startswith("torchrun ") and "-m chimera " in ln)]
    assert len(commands) >= 15 and {c[0] for c in commands} == {"info", "predict", "evaluate", "train"}
    for argv in commands:
        build_parser().parse_args(argv)  # SystemExit (argparse's error) on an unknown option or value
