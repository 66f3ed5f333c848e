"""The papermill runner: profiles, failures named by notebook and cell, --keep-going, summary."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pandas as pd
import papermill as pm
import pytest

import ddcore.reproduce as rp
from ddcore.checks import check_parameters

ROOT = Path(__file__).resolve().parents[1]


def _notebook(path, body):
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("output_dir = '.'\nfigures_dir = '.'\nvalue = 1")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(body)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


@pytest.fixture
def fake_project(tmp_path, monkeypatch):
    (tmp_path / "nb").mkdir()
    (tmp_path / "profiles").mkdir()
    write_results = (
        "import pandas as pd\nfrom ddcore.studies.report import save_results\n"
        "save_results(output_dir, '10_ok', {'value': value}, pd.DataFrame([{'metric': value * 2}]))"
    )
    _notebook(tmp_path / "nb" / "10_ok.ipynb", write_results)
    _notebook(tmp_path / "nb" / "11_fails.ipynb", "raise RuntimeError('broken on purpose')")
    (tmp_path / "profiles" / "cpu.yaml").write_text("all: {}\n10_ok: {value: 21}\n")
    monkeypatch.setattr(rp, "NOTEBOOKS", tmp_path / "nb")
    monkeypatch.setattr(rp, "PROFILES", tmp_path / "profiles")
    return tmp_path


def test_profile_parameters_and_summary(fake_project, capfd):
    rp.reproduce("cpu", only=["10_ok"], results_root=fake_project / "results", progress=False)
    assert "without encryption" not in capfd.readouterr().err  # the kernel runs over IPC, not TCP
    summary = pd.read_csv(fake_project / "results" / "cpu" / "summary.csv")
    assert summary.metric.tolist() == [42] and summary.notebook.tolist() == ["10_ok"]


def test_parameters_set_on_the_command_line_win_over_the_profile(fake_project):
    assert rp.main(["--only", "10_ok", "--results", str(fake_project / "results"), "-p", "value", "5"]) == 0
    summary = pd.read_csv(fake_project / "results" / "cpu" / "summary.csv")
    assert summary.metric.tolist() == [10]  # 5 (int, read as YAML) x 2, not the profile's 21
    assert rp.parse_overrides([("subtasks", "[1, 2]"), ("fresh", "true"), ("name", "dm")]) == {
        "subtasks": [1, 2],
        "fresh": True,
        "name": "dm",
    }
    with pytest.raises(ValueError, match=r"notebook 10_ok has no parameter \['nope'\]"):
        rp.reproduce("cpu", only=["10_ok"], results_root=fake_project / "results", overrides={"nope": 1})
    with pytest.raises(ValueError, match="not allowed with --in-place"):
        rp.reproduce(None, only=["10_ok"], results_root=fake_project / "results", overrides={"value": 1})
    with pytest.raises(ValueError, match="not valid YAML"):
        rp.parse_overrides([("value", "[1, 2")])


def test_a_failure_names_the_notebook_and_cell(fake_project):
    with pytest.raises(
        rp.NotebookFailed, match=r"notebook 11_fails failed in cell In \[3\] \(RuntimeError: broken on purpose\)"
    ):
        rp.reproduce("cpu", results_root=fake_project / "results", progress=False)


def test_keep_going_runs_the_rest_and_reports_failures(fake_project):
    with pytest.raises(rp.NotebookFailed, match="11_fails"):
        rp.reproduce(
            "cpu", only=["11_fails", "10_ok"], keep_going=True, results_root=fake_project / "results", progress=False
        )
    status = pd.read_csv(fake_project / "results" / "cpu" / "status.csv")
    assert status.set_index("notebook").ok.to_dict() == {"11_fails": False, "10_ok": True}
    assert "partial output is" in status.error[0] and (fake_project / "results/cpu/11_fails.ipynb").exists()


def test_bad_profile_and_notebook_names(fake_project):
    with pytest.raises(ValueError, match="profile='fast' is not allowed; choose one of \\['cpu'\\]"):
        rp.reproduce("fast")
    with pytest.raises(ValueError, match="notebook='99_nope' is not allowed"):
        rp.reproduce("cpu", only=["99_nope"])


def test_every_notebook_has_an_inspectable_parameters_cell():
    names = sorted(p.name for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    assert names[:2] == ["00_quickstart.ipynb", "01_baselines.ipynb"]
    for name in names:
        params = pm.inspect_notebook(str(ROOT / "notebooks" / name))
        for required in ("dataset", "seed", "device", "output_dir", "figures_dir"):
            assert required in params, f"{name} lacks parameter {required}"
        assert all(p["help"] for p in params.values()), f"{name}: every parameter needs a help comment"


def test_profiles_only_name_existing_notebooks_and_parameters():
    for profile in rp.available_profiles():
        for name in rp.available_notebooks():
            params = rp.profile_parameters(profile, name)
            known = pm.inspect_notebook(str(ROOT / "notebooks" / f"{name}.ipynb"))
            unknown = set(params) - set(known)
            assert not unknown, f"profile {profile} sets {unknown}, which {name} does not have"
            # every value fits the parameter's annotation, as check_parameters will demand
            types = {"int": int, "float": float, "bool": bool, "str": str, "list": list, "dict": dict}
            check_parameters({"__annotations__": {k: types[known[k]["inferred_type_name"]] for k in params}, **params})


def test_in_place_refreshes_the_committed_notebook_and_publishes_its_figures(fake_project, monkeypatch):
    monkeypatch.setattr(rp, "ROOT", fake_project)
    (fake_project / "figures").mkdir()
    _notebook(
        fake_project / "nb" / "12_fig.ipynb",
        "import os\nos.makedirs('../results/figures', exist_ok=True)\n"
        "open('../results/figures/a.png', 'w').write('png')\nprint('ran', value)",
    )
    (fake_project / "results" / "figures").mkdir(parents=True)
    (fake_project / "results" / "figures" / "old.png").write_text("older run")
    os.utime(fake_project / "results" / "figures" / "old.png", (0, 0))
    rp.reproduce(None, only=["12_fig"], results_root=fake_project / "results", progress=False)
    nb = nbformat.read(fake_project / "nb" / "12_fig.ipynb", as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert "ran 1" in code[-1].outputs[0]["text"]  # the notebook's own default, no injected cell
    assert not any("injected-parameters" in c.metadata.get("tags", []) for c in nb.cells)
    assert sorted(p.name for p in (fake_project / "figures").iterdir()) == ["a.png"]  # not the stale one
    with pytest.raises(rp.NotebookFailed):
        rp.reproduce(None, only=["11_fails"], results_root=fake_project / "results", progress=False)
    assert not any(c.get("outputs") for c in nbformat.read(fake_project / "nb" / "11_fails.ipynb", as_version=4).cells)


def test_profile_extends_another(fake_project):
    (rp.PROFILES / "big.yaml").write_text("all: {value: 1, other: 2}\n10_ok: {value: 3}\n")
    (rp.PROFILES / "big_variant.yaml").write_text("extends: big\nall: {other: 5}\n")
    assert rp.profile_parameters("big_variant", "10_ok") == {"value": 3, "other": 5}
    (rp.PROFILES / "loop.yaml").write_text("extends: loop\n")
    with pytest.raises(ValueError, match="loop"):
        rp.profile_parameters("loop", "10_ok")


def test_gpu_fashion_mnist_profile_needs_no_download():
    params = rp.profile_parameters("gpu_fashion_mnist", "01_baselines")
    assert params["dataset"] == "fashion_mnist" and params["download"] is False and params["data_root"] == ""
    assert params["width"] == 128 and params["dc_iterations"] == 1000  # the rest is gpu's


def test_committed_notebooks_keep_their_outputs_and_stay_small():
    for path in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"):
        nb = nbformat.read(path, as_version=4)
        assert any(c.get("outputs") for c in nb.cells if c.cell_type == "code"), f"{path.name} has no outputs"
        assert path.stat().st_size < 2 * 2**20


@pytest.mark.slow
def test_reproduce_quickstart_end_to_end(tmp_path):
    """The command a user types, with the cpu profile: figure and results file hold what it printed."""
    out = tmp_path / "results"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ddcore.reproduce",
            "--profile",
            "cpu",
            "--only",
            "00_quickstart",
            "--results",
            str(out),
            # small settings on top of the profile: the pipeline end to end in about a minute
            # (nbval runs the committed notebook at its defaults)
            *("-p", "iterations", "10", "-p", "eval_epochs", "20", "-p", "num_nets", "2"),
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    run = out / "cpu"
    results = json.loads((run / "00_quickstart.results.json").read_text())
    assert results["parameters"]["iterations"] == 10 and results["parameters"]["num_nets"] == 2
    assert results["parameters"]["ipc"] == 10 and len(results["rows"]) == 2 * 2
    figures = list((run / "figures").glob("00_quickstart_*_images.png"))
    assert len(figures) == 1 and figures[0].stat().st_size > 10_000
    executed = nbformat.read(run / "00_quickstart.ipynb", as_version=4)
    printed = "".join(o.get("text", "") for c in executed.cells if c.cell_type == "code" for o in c.outputs)
    gain = float(re.search(r"DM minus random subset: ([+-][\d.]+) points", printed).group(1))
    assert gain == pytest.approx(results["extra"]["dm_minus_random"], abs=0.051)
    summary = pd.read_csv(run / "summary.csv")
    assert len(summary) == len(results["rows"]) and set(summary.method) == {"random", "dm"}


BAD_PARAMETERS = [  # (parameter, bad value, words the error must contain)
    ("dataset", "no_such_data", ["no_such_data", "mnist5k"]),
    ("device", "tpu", ["tpu", "cpu"]),
    ("seed", "zero", ["seed='zero'", "expected int"]),
]


@pytest.mark.parametrize("name", sorted(p.stem for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")))
def test_a_mistyped_parameter_stops_a_notebook_early_with_a_clear_error(name, tmp_path):
    """Batch users mistype parameters: the notebook fails in its first code cells, naming the value."""
    for parameter, value, words in BAD_PARAMETERS:
        out = tmp_path / f"{name}_{parameter}.ipynb"
        with pytest.raises(pm.PapermillExecutionError) as failure:
            pm.execute_notebook(
                str(ROOT / "notebooks" / f"{name}.ipynb"),
                str(out),
                progress_bar=False,
                cwd=str(ROOT / "notebooks"),
                kernel_name="python3",
                parameters={parameter: value, "output_dir": str(tmp_path / "o"), "figures_dir": str(tmp_path / "f")},
            )
        error = failure.value
        assert error.ename in ("ValueError", "TypeError"), error.ename
        assert all(w in error.evalue for w in words), error.evalue
        first_cells = [c for c in nbformat.read(out, as_version=4).cells if c.cell_type == "code"][:3]
        assert any(o.get("output_type") == "error" for c in first_cells for o in c.get("outputs", [])), (
            f"{name}: {parameter}={value!r} was not caught in the first code cells"
        )


def test_in_place_stamps_the_code_its_outputs_came_from(fake_project, monkeypatch):
    monkeypatch.setattr(rp, "ROOT", fake_project)
    (fake_project / "figures").mkdir()
    _notebook(  # the committed notebooks' own default: output_dir = "../results/notebooks"
        fake_project / "nb" / "10_ok.ipynb",
        "import pandas as pd\nfrom ddcore.studies.report import save_results\n"
        "save_results('../results/notebooks', '10_ok', {'value': value}, pd.DataFrame([{'metric': value * 2}]))",
    )
    assert rp.stale_notebooks(rp.NOTEBOOKS) == ["10_ok", "11_fails"]  # never executed in place
    rp.reproduce(None, only=["10_ok"], results_root=fake_project / "results", progress=False)
    assert rp.stale_notebooks(rp.NOTEBOOKS) == ["11_fails"]
    summary = pd.read_csv(fake_project / "results" / "in_place" / "summary.csv")
    assert summary.metric.tolist() == [2]  # the results file the notebook wrote with its own output_dir
    nb = nbformat.read(rp.NOTEBOOKS / "10_ok.ipynb", as_version=4)
    nb.cells[-1].source += "\n# an edit after the run"
    nbformat.write(nb, rp.NOTEBOOKS / "10_ok.ipynb")
    assert rp.stale_notebooks(rp.NOTEBOOKS) == ["10_ok", "11_fails"]


def test_committed_notebooks_were_executed_from_their_code():
    """A code cell edited without `make notebooks` (or --in-place --only NAME) fails here."""
    assert rp.stale_notebooks() == []


def test_in_place_records_the_numbers_the_conclusion_quotes(fake_project, monkeypatch):
    """make notebooks: the kernel writes its quoted numbers, reproduce keeps them in the metadata;
    a later run (nbval's) compares with them, and the environment is left as it was."""
    monkeypatch.setattr(rp, "ROOT", fake_project)
    (fake_project / "figures").mkdir()
    body = (
        "import pandas as pd\nfrom ddcore.studies.quoted import check_quoted, quoted_numbers\n"
        "results = pd.DataFrame({'method': ['dm', 'dm'], 'accuracy': [0.5, 0.7]})\n"
        "print(check_quoted(quoted_numbers(results, ('method',)), '10_ok', {'value': value}))"
    )
    _notebook(fake_project / "nb" / "10_ok.ipynb", body)
    rp.reproduce(None, only=["10_ok"], results_root=fake_project / "results", progress=False)
    nb = nbformat.read(rp.NOTEBOOKS / "10_ok.ipynb", as_version=4)
    quoted = nb.metadata["ddcore"]["quoted"]
    assert quoted["parameters"] == {"value": 1} and quoted["numbers"]["method=dm accuracy"]["mean"] == pytest.approx(60)
    assert nb.cells[-1].outputs[0]["text"].strip().endswith(": True")
    assert rp.RECORD_ENV not in os.environ
    # a run under a profile compares instead of recording: other parameters, so it says so
    rp.reproduce("cpu", only=["10_ok"], results_root=fake_project / "results", progress=False)
    out = nbformat.read(fake_project / "results" / "cpu" / "10_ok.ipynb", as_version=4)
    assert "parameters differ from the committed run's (value)" in out.cells[-1].outputs[0]["text"]
