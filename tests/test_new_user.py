"""What a new user hits first (issue 22): the documented folders missing, non-differentiable rewards given to
gradient engines, and misspelled options and missing files on the command line."""

import re
from pathlib import Path

import pytest
import torch
from test_discrete_smc import make_model as masked_model
from test_discrete_smc import process as masked_process
from test_discrete_smc import table
from test_search import small_process
from test_smc import make_model

from tilted.cli import main
from tilted.distributions import TableReward, load_pipeline
from tilted.errors import MissingWeightsError, TiltedError
from tilted.inference import DPS, MPGD, SMC, FreeDoM, ParticleGibbs, TaylorGuidance
from tilted.rewards import CLIPScore, as_reward
from tilted.rewards.loading import from_pretrained, is_local

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
HF_DOWNLOAD = re.compile(r"hf download (\S+)((?:\s+--(?:include|exclude) \"[^\"]+\")*)\s+--local-dir (\S+)")


def documented(pattern: str) -> dict[str, list[str]]:
    """Every match of ``pattern`` (one group) in README.md and docs/*.md, with the files it is in."""
    found: dict[str, list[str]] = {}
    for path in DOCS:
        for value in re.findall(pattern, path.read_text(encoding="utf-8")):
            found.setdefault(value, []).append(path.name)
    return found


#: the local folders the docs load from, and the ``hf download`` commands they give (folder → (id, filters))
FOLDERS = documented(r"(?:from_pretrained\(|load_pipeline\(|processor=)\"(models/[^\"]+)\"")
COMMANDS = {
    folder: (hub_id, set(re.findall(r"--(?:include|exclude) \"[^\"]+\"", filters)))
    for path in DOCS
    for hub_id, filters, folder in HF_DOWNLOAD.findall(path.read_text(encoding="utf-8").replace("\\\n", " "))
}


class NeverLoads:
    """A loader that must not be reached: the folder is checked first."""

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        raise AssertionError("a missing local folder must not reach the loader")


# -- 1. missing documented folders name their real hub id --------------------------------------


def test_the_docs_load_from_the_folders_this_test_checks():
    assert {"models/clip-vit-large-patch14", "models/stable-diffusion-v1-5", "models/FLUX.1-dev"} <= set(FOLDERS)
    assert "models/stable-diffusion-v1-5" in COMMANDS and "models/clip-vit-large-patch14" in COMMANDS


@pytest.mark.parametrize("folder", sorted(FOLDERS))
def test_every_documented_folder_names_its_hub_id_when_missing(folder, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no models/ here
    with pytest.raises(MissingWeightsError) as info:
        from_pretrained(NeverLoads, folder, what="the model", default_id=None, usage="load({folder})")
    message = str(info.value)
    assert f"no folder at {folder!r}" in message
    hub_id, filters = re.search(r"hf download (\S+)(.*) --local-dir", message).groups()
    assert re.fullmatch(r"[\w.-]+/[\w.-]+", hub_id) and not hub_id.startswith(("models/", "OWNER/")), message
    assert f"--local-dir {folder}\n" in message and f"load({folder!r})" in message
    if folder in COMMANDS:  # the docs' own command: the same hub id and (at least) its filters
        doc_id, doc_filters = COMMANDS[folder]
        assert hub_id == doc_id
        assert doc_filters <= set(re.findall(r"--(?:include|exclude) \"[^\"]+\"", filters)), (doc_filters, filters)


def test_a_missing_clip_folder_says_what_to_download(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(MissingWeightsError) as info:
        CLIPScore.from_pretrained("models/clip-vit-large-patch14", prompts="a cat")
    message = str(info.value)
    assert "hf download models/" not in message and "Hugging Face cache" not in message
    assert "hf download openai/clip-vit-large-patch14 " in message


@pytest.mark.parametrize("path", ["models/x", "./x", "../x", "/no/such/x", "~/no-such-x", "a/b/c", Path("x")])
def test_local_looking_paths_are_local(path):
    assert is_local(path)


@pytest.mark.parametrize("hub_id", ["openai/clip-vit-large-patch14", "stable-diffusion-v1-5/stable-diffusion-v1-5"])
def test_hub_ids_are_not_local(hub_id, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert not is_local(hub_id)


def test_an_unknown_missing_folder_says_which_folder_to_create_or_which_id_to_pass(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(MissingWeightsError) as info:
        load_pipeline("models/my-sd")
    message = str(info.value)
    assert "no folder at 'models/my-sd'. Create it" in message
    assert "hf download OWNER/NAME --local-dir models/my-sd" in message and "hub id" in message
    with pytest.raises(MissingWeightsError) as info:
        CLIPScore.from_pretrained("models/my-clip", prompts="a cat")
    message = str(info.value)
    assert "no folder at 'models/my-clip'. Pass the hub id of the model you meant" in message
    assert "hf download openai/clip-vit-large-patch14" in message


# -- 2. load_pipeline: diffusers pipelines with the same hints -----------------------------------


def test_load_pipeline_of_the_docs_sd_folder_gives_the_docs_download_command(tmp_path, monkeypatch):
    from diffusers import StableDiffusionPipeline

    monkeypatch.chdir(tmp_path)
    with pytest.raises(MissingWeightsError) as info:
        load_pipeline("models/stable-diffusion-v1-5", StableDiffusionPipeline, dtype=torch.float16)
    message = str(info.value)
    hub_id, filters = COMMANDS["models/stable-diffusion-v1-5"]
    assert f"hf download {hub_id} {' '.join(sorted(filters, key=message.index))} --local-dir" in message
    assert "safety_checker=None" in message
    assert "load_pipeline('models/stable-diffusion-v1-5', StableDiffusionPipeline, ...)" in message
    (tmp_path / "models" / "stable-diffusion-v1-5").mkdir(parents=True)  # there, but empty
    with pytest.raises(MissingWeightsError, match="lacks files .*model_index.json"):
        load_pipeline("models/stable-diffusion-v1-5")


def test_load_pipeline_of_an_uncached_hub_id_offline_names_the_download(tmp_path):
    with pytest.raises(MissingWeightsError) as info:
        load_pipeline("stable-diffusion-v1-5/stable-diffusion-v1-5", cache_dir=tmp_path)
    message = str(info.value)
    assert "as a hub id it is neither in the local Hugging Face cache nor reachable" in message
    assert '--include "text_encoder/model.safetensors" --local-dir models/stable-diffusion-v1-5' in message


def test_load_pipeline_loads_a_saved_pipeline(tmp_path):
    from diffusers import StableDiffusionPipeline
    from test_pipelines import tiny_sd_pipeline

    tiny_sd_pipeline(tmp_path / "tokenizer").save_pretrained(tmp_path / "sd")
    for pipe in (load_pipeline(tmp_path / "sd"), load_pipeline(str(tmp_path / "sd"), StableDiffusionPipeline)):
        assert isinstance(pipe, StableDiffusionPipeline) and pipe.unet.config.sample_size == 8
    half = load_pipeline(tmp_path / "sd", StableDiffusionPipeline, dtype=torch.bfloat16)
    assert half.unet.dtype == torch.bfloat16


# -- 3. differentiable=False is refused where gradients are taken ----------------------------------


def smooth(x):
    return -(x**2).sum(-1)


GAUSSIAN = {
    "SMC(proposal='gradient')": lambda m: SMC(m, 4, proposal="gradient"),
    "ParticleGibbs(proposal='gradient')": lambda m: ParticleGibbs(m, 4, num_sweeps=2, proposal="gradient"),
    "DPS": lambda m: DPS(m, 4),
    "FreeDoM": lambda m: FreeDoM(m, 4),
    "MPGD": lambda m: MPGD(m, 4),
}


@pytest.mark.parametrize("name", GAUSSIAN)
def test_gradient_engines_refuse_a_non_differentiable_reward(name):
    # smooth in torch, but declared non-differentiable: the declaration is what counts
    model = make_model(small_process(num_steps=3), as_reward(smooth, differentiable=False))
    with pytest.raises(TiltedError) as info:
        GAUSSIAN[name](model).run(seed=0)
    message = str(info.value)
    assert "reward of factor 'r' (Function) is not differentiable (it declares differentiable=False)" in message
    assert ("proposal='prior'" if "proposal" in name else "SVDD") in message
    GAUSSIAN[name](make_model(small_process(num_steps=3), as_reward(smooth))).run(seed=0)


def test_engines_without_gradients_take_a_non_differentiable_reward():
    model = make_model(small_process(num_steps=3), as_reward(smooth, differentiable=False))
    SMC(model, 4).run(seed=0)
    SMC(model, 4, proposal="gradient", potential="terminal").run(seed=0)  # ψ = 0 until the end: no gradient
    DPS(model, 4, scale=0).run(seed=0)


def test_masked_gradient_engines_refuse_a_non_differentiable_reward():
    process = masked_process(3, 2, 3, seed=0)
    reward = TableReward(table(3, 2, 1))
    reward.differentiable = False
    for engine in (lambda m: SMC(m, 4, proposal="gradient"), lambda m: TaylorGuidance(m, 4)):
        with pytest.raises(TiltedError, match="factor 'r' \\(TableReward\\) is not differentiable"):
            engine(masked_model(process, reward)).run(seed=0)
        engine(masked_model(process, TableReward(table(3, 2, 1)))).run(seed=0)


# -- 4. the command line: one-line errors, exit status 2 --------------------------------------------


def write_spec(folder: Path, model_options: str, engine_options: str) -> str:
    path = folder / "spec.toml"
    path.write_text(
        'model = "tilted.diagnostics.toys:das_toy"\nengine = "SMC"\nseed = 0\n'
        f"[model_options]\n{model_options}\n[engine_options]\n{engine_options}\n"
    )
    return str(path)


@pytest.mark.parametrize(
    "model_options, engine_options, bad, close",
    [
        ("num_steps = 4", "num_particle = 8", "num_particle", "num_particles"),
        ("num_step = 4", "num_particles = 8", "num_step", "num_steps"),
        ("num_steps = 4", 'num_particles = 8\ntempering = { name = "exponential", gama = 0.1 }', "gama", "gamma"),
    ],
)
def test_run_with_a_misspelled_option_is_a_one_line_error(tmp_path, capsys, model_options, engine_options, bad, close):
    spec = write_spec(tmp_path, model_options, engine_options)
    assert main(["run", spec, "--out", str(tmp_path / "r.nc"), "--no-progress"]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in captured.err + captured.out
    assert f"takes no option {bad!r}: did you mean {close!r}?" in err and err.startswith("tilted run: ")
    assert not (tmp_path / "r.nc").exists()


def test_run_with_a_bad_option_value_is_a_one_line_error(tmp_path, capsys):
    spec = write_spec(tmp_path, "num_steps = 4", 'num_particles = 8\nproposal = "gradiant"')
    assert main(["run", spec, "--out", str(tmp_path / "r.nc")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "proposal" in err and "gradiant" in err


def test_report_of_a_missing_or_unreadable_file_is_a_one_line_error(tmp_path, capsys):
    missing = tmp_path / "missing.nc"
    assert main(["report", str(missing), "--out", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(missing) in err and "tilted run" in err
    bad = tmp_path / "bad.nc"
    bad.write_text("not netCDF")
    assert main(["report", str(bad), "--out", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot read" in err and "Traceback" not in err


def test_run_and_report_still_work(tmp_path, capsys):
    spec = write_spec(tmp_path, "num_steps = 4", "num_particles = 8")
    assert main(["run", spec, "--out", str(tmp_path / "r.nc"), "--no-progress", "--baseline", "0"]) == 0
    assert main(["report", str(tmp_path / "r.nc"), "--out", str(tmp_path / "r.html")]) == 0
    assert (tmp_path / "r.html").exists()
