"""The server's routes with Starlette's TestClient: the form, the checks, the runs, labels."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from ui_helpers import Server, tiny_form

from lorakit.config import TrainConfig, load_config
from lorakit.testing import run_cli


def post_form(client, values: dict[str, str], route: str = "/api/validate", backend: str = "sd"):
    body = {"backend": backend, "template": "sd15", "values": values}
    return client.post(route, json=body).json()


# -- 1. the command --------------------------------------------------------------------------


def test_ui_is_a_plugin_command_that_loads_no_web_stack_or_torch_for_help():
    code = (
        "import sys\nfrom lorakit.cli import main\n"
        "for argv in (['--help'], ['ui', '--help']):\n"
        "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
        "print('LOADED', sorted(m for m in ('torch', 'starlette', 'uvicorn') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "Serve a local web page" in done.stdout
    assert "--runs-dir" in done.stdout and "--port" in done.stdout
    assert "LOADED []" in done.stdout, done.stdout[-400:]


def test_another_host_prints_a_warning_and_a_browsable_url_with_the_token(tmp_path):
    import http.client

    server = Server(tmp_path / "runs", host="0.0.0.0")
    try:
        server.wait()
        output = server.output()
        assert "warning: serving on 0.0.0.0" in output
        assert f"http://localhost:{server.port}/?token={server.token}" in output
        assert server.get("/", login=False)[0] == 403
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        conn.request("GET", f"//evil.example/?token={server.token}")
        answer = conn.getresponse()
        assert answer.status == 303 and answer.getheader("location") == "/"  # only local paths
        cookie = answer.getheader("set-cookie")
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie
        answer.read()
        conn.request("GET", "/", headers={"Cookie": cookie.split(";")[0]})
        page = conn.getresponse()
        assert page.status == 200 and "Runs" in page.read().decode()
        conn.request("GET", "/", headers={"Cookie": f"lorakit_ui_token_{server.port}=wrong"})
        assert conn.getresponse().status == 403
    finally:
        server.stop()


def test_a_bad_port_is_one_line_and_exit_2(capsys):
    code, _, err = run_cli(capsys, "ui", "--port", "70000")
    assert code == 2 and err.strip() == "lorakit: error: --port: 70000 is not a port number"


def test_loopback_needs_the_token_too(client):
    from starlette.testclient import TestClient

    assert client.get("/").status_code == 200
    assert 'data-page="runs"' in client.get("/").text
    bare = TestClient(client.app, base_url="http://127.0.0.1:7860")
    assert bare.get("/").status_code == 403


# -- 2. a new run ----------------------------------------------------------------------------


def test_the_form_has_every_schema_key_with_the_templates_values(client):
    from lorakit_sd.config import SDSection
    from markupsafe import escape

    page = client.get("/new?backend=sd&template=sd15").text
    for key, info in TrainConfig.model_fields.items():
        if key != "distributed":
            assert f'data-key="{key}"' in page, key
            assert str(escape(info.description or "")) in page, key
    for key, info in SDSection.model_fields.items():
        nested = getattr(info.annotation, "model_fields", None)  # sd.video: its keys
        for full in [f"{key}.{sub}" for sub in nested] if nested else [key]:
            assert f'data-key="sd.{full}"' in page, full
    assert 'data-key="distributed.strategy"' in page
    assert 'value="1e-4"' in page  # learning_rate as the template writes it
    assert "<option selected>bf16</option>" in page  # mixed_precision from the template
    sdxl = client.get("/new?backend=sd&template=sdxl").text
    assert "<option selected>sdxl</option>" in sdxl
    llm = client.get("/new?backend=llm").text
    assert 'data-key="llm.' in llm


def test_a_wrong_value_gets_the_message_lorakit_config_validate_prints(
    client, runs_dir, tiny_sd, images, tmp_path, capsys
):
    values = tiny_form(tiny_sd, images, runs_dir, lora_rank="0")
    answer = post_form(client, values)
    assert answer["ok"] is False and answer["key"] == "lora_rank"
    # the same file through the CLI: the same one line
    path = Path(values["config_path"])
    path.write_text(answer["yaml"])
    code, _, err = run_cli(capsys, "config", "validate", path)
    assert code == 2
    assert err.strip() == f"lorakit: error: {answer['error']}"
    assert answer["error"].startswith(f"{path}:") and "lora_rank" in answer["error"]


def test_a_typo_under_other_keys_gets_did_you_mean_beside_that_box(
    client, runs_dir, tiny_sd, images
):
    values = tiny_form(tiny_sd, images, runs_dir, _extra="lerning_rate: 0.1")
    answer = post_form(client, values)
    assert answer["ok"] is False and answer["key"] == "_extra"
    assert "did you mean 'learning_rate'" in answer["error"]
    section = post_form(
        client, tiny_form(tiny_sd, images, runs_dir, _extra="sd:\n  resolutoin: 64")
    )
    assert "sd.resolutoin" in section["error"] and "did you mean 'resolution'" in section["error"]


def test_a_control_character_under_other_keys_is_a_message_beside_that_box(
    client, runs_dir, tiny_sd, images
):
    # PyYAML's reader refuses it with an error that has no `problem`, unlike the parser's
    answer = post_form(client, tiny_form(tiny_sd, images, runs_dir, _extra="seed: 1\x07"))
    assert answer["ok"] is False and answer["key"] == "_extra"
    assert answer["error"].startswith("other keys: not YAML (unacceptable character #x0007")


def test_a_missing_folder_is_refused_beside_its_field(client, runs_dir, tiny_sd, tmp_path):
    answer = post_form(client, tiny_form(tiny_sd, tmp_path / "nope", runs_dir))
    assert answer["key"] == "train_data_dir" and "folder not found" in answer["error"]


def test_save_writes_the_exact_file_the_cli_runs_and_only_a_valid_one(
    client, runs_dir, tiny_sd, images, capsys
):
    values = tiny_form(tiny_sd, images, runs_dir, learning_rate="2e-4")
    path = Path(values["config_path"])
    bad = post_form(client, {**values, "batch_size": "many"}, "/api/save")
    assert bad["ok"] is False and bad["key"] == "batch_size" and not path.exists()
    answer = post_form(client, values, "/api/save")
    assert answer["ok"] is True, answer
    assert path.read_text() == answer["yaml"]
    assert not list(path.parent.glob(".*check*"))  # the probe copy is gone
    cfg = load_config(path)
    assert cfg.backend == "sd" and cfg.train.learning_rate == 2e-4
    assert cfg.section is not None and cfg.section.resolution == 32
    assert cfg.train.output_dir == str(runs_dir / "tiny")
    code, out, _ = run_cli(capsys, "config", "validate", path)
    assert code == 0 and "ok (backend sd" in out


def test_a_valid_form_shows_the_plan_line_train_prints(client, runs_dir, tiny_sd, images):
    from lorakit.app import plan_line

    values = tiny_form(tiny_sd, images, runs_dir)
    answer = post_form(client, values)
    assert answer["ok"] is True and answer["plan"].startswith("plan: peak ≈ "), answer
    saved = post_form(client, values, "/api/save")
    assert answer["plan"] == plan_line(load_config(Path(saved["path"])))
    bad = post_form(client, {**values, "batch_size": "many"})
    assert bad["plan"] is None


def test_start_refuses_an_output_dir_outside_the_runs_folder(
    client, runs_dir, tiny_sd, images, tmp_path
):
    values = tiny_form(tiny_sd, images, runs_dir, output_dir=str(tmp_path / "elsewhere"))
    answer = post_form(client, values, "/api/start")
    assert answer["ok"] is False and answer["key"] == "output_dir"
    assert "inside the runs folder" in answer["error"]


# -- 3. runs ---------------------------------------------------------------------------------


def fake_run(runs: Path, name: str, status: str, losses: list[float], **record) -> Path:
    """A run folder as the engine leaves it (run.json, metrics.jsonl, config.yaml, samples)."""
    out = runs / name
    (out / "samples").mkdir(parents=True)
    rows = [
        {"step": i + 1, "loss": v, "lr": 1e-3, "samples_per_s": 10.0, "elapsed_s": i + 1.0}
        for i, v in enumerate(losses)
    ]
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    steps = len(losses)
    final = {"steps": steps, "final_loss": losses[-1]} if status != "running" else {}
    (out / "run.json").write_text(
        json.dumps({"status": status, "started_at": "2026-11-29T06:00:00", **final, **record})
    )
    (out / "config.yaml").write_text("sample_prompts:\n- a red circle\n- a blue square\n")
    return out


def test_the_runs_list_shows_status_steps_loss_and_time(client, runs_dir):
    fake_run(runs_dir, "done", "finished", [1.0, 0.5], total_steps=2)
    fake_run(runs_dir, "cut", "interrupted", [1.0, 0.8, 0.7], total_steps=9)
    fake_run(runs_dir, "broke", "failed", [1.0], error="RunError: loss is nan")
    fake_run(runs_dir, "group/live", "running", [2.0, 1.5, 1.25])
    runs = {r["name"]: r for r in client.get("/api/runs").json()["runs"]}
    assert set(runs) == {"done", "cut", "broke", "group/live"}
    assert (runs["done"]["status"], runs["done"]["steps"], runs["done"]["loss"]) == (
        "finished",
        2,
        0.5,
    )
    assert runs["cut"]["status"] == "interrupted" and runs["cut"]["total_steps"] == 9
    assert runs["broke"]["error"] == "RunError: loss is nan"
    assert (runs["group/live"]["steps"], runs["group/live"]["loss"]) == (3, 1.25)
    assert runs["done"]["elapsed_s"] == 2.0
    assert not runs["cut"]["can_resume"]  # no checkpoint to resume from
    (runs_dir / "cut" / "checkpoints" / "step-3").mkdir(parents=True)
    (runs_dir / "cut" / "checkpoints" / "step-3" / "trainer_state.json").write_text("{}")
    runs = {r["name"]: r for r in client.get("/api/runs").json()["runs"]}
    assert runs["cut"]["can_resume"] and not runs["done"]["can_resume"]


def test_a_run_page_serves_new_metrics_samples_with_prompts_and_downloads(client, runs_dir):
    out = fake_run(runs_dir, "done", "finished", [1.0, 0.9, 0.8])
    with open(out / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 3, "eval_loss": 0.95}) + "\n")
    (out / "samples" / "step-000003-01.png").write_bytes(b"\x89PNG fake")
    (out / "samples" / "step-000003-00.png").write_bytes(b"\x89PNG fake")
    (out / "samples" / "step-000003.png").write_bytes(b"\x89PNG sheet of both")
    (out / "samples" / "step-3.txt").write_text("### a prompt\nan answer\n")
    (out / "done.safetensors").write_bytes(b"weights")
    data = client.get("/api/runs/done?since=2").json()
    assert [r.get("step") for r in data["metrics"]] == [3, 3]
    assert data["metrics"][-1]["eval_loss"] == 0.95
    images = [s for s in data["samples"] if s["kind"] == "image"]
    assert sorted((s["path"], s["prompt"]) for s in images) == [
        ("samples/step-000003-00.png", "a red circle"),
        ("samples/step-000003-01.png", "a blue square"),
    ]
    assert any(s["kind"] == "text" and "an answer" in s["text"] for s in data["samples"])
    assert data["downloads"][0] == "done.safetensors"
    got = client.get("/runs/done/files/done.safetensors")
    assert got.content == b"weights" and "attachment" in got.headers["content-disposition"]
    assert client.get("/runs/done/files/%2e%2e/%2e%2e/etc/passwd").status_code == 404
    assert client.get("/runs/%2e%2e/x/files/run.json").status_code == 404
    assert client.get("/runs/nothing-here").status_code == 404
    page = client.get("/runs/done").text
    assert "loss-chart" in page and 'data-run="done"' in page


def test_a_nested_section_keeps_the_templates_values_and_round_trips(client):
    """``sd.video`` of the Wan template: shown as ``sd.video.*`` fields with the template's
    values, and written back as the nested mapping the config reads."""
    from lorakit_ui.forms import template_values, to_config

    values = template_values("sd", "wan21-t2v")
    assert values["sd.video.frames"] == "[17, 33, 49, 81]" and values["sd.video.fps"] == "16"
    data = to_config({**values, "sd.video.fps": "8"}, "sd")
    assert data["sd"]["video"]["frames"] == [17, 33, 49, 81] and data["sd"]["video"]["fps"] == 8
    page = client.get("/new?backend=sd&template=wan21-t2v").text
    assert 'data-key="sd.video.frames"' in page and "[17, 33, 49, 81]" in page


def test_preview_clips_are_shown_as_video(client, runs_dir):
    """A video model's previews: each clip once, as video (not its animated webp twin, nor
    the sheet of first frames), served inline as video/mp4."""
    out = fake_run(runs_dir, "clips", "finished", [1.0])
    for name in ("step-000001-00.mp4", "step-000001-00.webp", "step-000001-01.mp4"):
        (out / "samples" / name).write_bytes(b"\x00\x00\x00\x18ftypisom")
    (out / "samples" / "step-000001-01.webp").write_bytes(b"RIFF")
    (out / "samples" / "step-000001.png").write_bytes(b"\x89PNG sheet")
    samples = client.get("/api/runs/clips").json()["samples"]
    assert sorted((s["kind"], s["path"], s["prompt"]) for s in samples) == [
        ("video", "samples/step-000001-00.mp4", "a red circle"),
        ("video", "samples/step-000001-01.mp4", "a blue square"),
    ]
    got = client.get("/runs/clips/files/samples/step-000001-00.mp4")
    assert got.headers["content-type"] == "video/mp4"
    assert "attachment" not in got.headers.get("content-disposition", "")


def test_one_training_at_a_time_unless_parallel(runs_dir, tiny_sd, images, tmp_path):
    from lorakit_ui.runs import Job, RunManager

    manager = RunManager(runs_dir)
    busy = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        manager.jobs["busy"] = Job(
            "busy", runs_dir / "busy", tmp_path / "x.yaml", busy, tmp_path / "log"
        )
        with pytest.raises(Exception, match="still training: one run at a time"):
            manager.start(tmp_path / "missing.yaml", runs_dir / "other")
        manager.parallel = True
        name = manager.start(tmp_path / "missing.yaml", runs_dir / "other")
        manager.jobs[name].process.wait(timeout=120)
        summary = manager.summary(name)
        assert summary["status"] == "failed"
        assert "missing.yaml" in summary["error"]  # the CLI's one line, from the log
    finally:
        busy.kill()
        busy.wait()


# -- labels ----------------------------------------------------------------------------------


def test_label_from_the_page_and_edit_metadata_csv(client, images):
    (images / "metadata.csv").unlink()
    answer = client.post(
        "/api/label", json={"data_dir": str(images), "labeler": "filename", "prefix": "sks"}
    ).json()
    assert answer["ok"], answer
    table = client.get("/api/metadata", params={"data_dir": str(images)}).json()
    assert [r["file_name"] for r in table["rows"]] == [f"img_{i:03d}.png" for i in range(4)]
    assert all(r["text"].startswith("sks") for r in table["rows"])
    table["rows"][0]["text"] = "sks, a red disc"
    saved = client.post("/api/metadata", json={**table, "data_dir": str(images)}).json()
    assert saved["ok"]
    from lorakit.app import read_metadata

    assert read_metadata(images / "metadata.csv")[1][0]["text"] == "sks, a red disc"
    again = client.post("/api/label", json={"data_dir": str(images), "labeler": "filename"}).json()
    assert not again["ok"] and again["error"].startswith("lorakit: error:")
    wrong = {**table, "data_dir": str(images), "rows": [{"file_name": "nope.png", "text": "x"}]}
    assert "no image named nope.png" in client.post("/api/metadata", json=wrong).json()["error"]
    assert (
        client.get(
            "/api/image", params={"data_dir": str(images), "name": "img_000.png"}
        ).status_code
        == 200
    )
    assert (
        client.get("/api/image", params={"data_dir": str(images), "name": "../x"}).status_code
        == 404
    )


def test_a_symlinked_run_folder_is_skipped_with_a_note(client, runs_dir, tmp_path):
    fake_run(runs_dir, "real", "finished", [1.0])
    elsewhere = fake_run(tmp_path / "elsewhere", "r", "finished", [1.0])
    (runs_dir / "linked").symlink_to(elsewhere, target_is_directory=True)
    answer = client.get("/api/runs")
    assert answer.status_code == 200
    data = answer.json()
    assert [r["name"] for r in data["runs"]] == ["real"]
    assert data["notes"] == ["linked: skipped (a symbolic link)"]


def test_start_into_a_folder_with_an_earlier_run_is_refused_with_the_clis_line(
    client, runs_dir, tiny_sd, images
):
    from lorakit.app import earlier_run

    out = fake_run(runs_dir, "tiny", "finished", [1.0])
    (out / "checkpoints" / "step-1").mkdir(parents=True)
    (out / "checkpoints" / "step-1" / "trainer_state.json").write_text("{}")
    values = tiny_form(tiny_sd, images, runs_dir)
    answer = post_form(client, values, "/api/start")
    assert answer["ok"] is False and answer["key"] == "output_dir"
    assert answer["error"] == earlier_run(out).format()
    assert not Path(values["config_path"]).exists()  # refused: no file written


def test_the_form_basic_keys_first_per_run_config_path_and_field_errors(
    client, runs_dir, tiny_sd, images
):
    page = client.get("/new").text
    assert 'data-backend="sd"' in page  # sd first when no run says otherwise
    basic, advanced = page.split('id="advanced"')
    assert 'data-key="learning_rate"' in basic and 'data-key="sd.bucket_step"' in advanced
    assert f'value="{runs_dir / "my_lora.yaml"}"' in page  # its own file, from output_dir
    (runs_dir / "my_lora").mkdir()
    assert f'value="{runs_dir / "my_lora-2"}"' in client.get("/new").text  # a free folder
    values = tiny_form(
        tiny_sd, images, runs_dir, **{"sd.resolution": "100", "sd.bucket_step": "64"}
    )
    values.pop("config_path")
    answer = post_form(client, values)
    assert answer["key"] == "sd.bucket_step" and "multiple of sd.bucket_step" in answer["error"]
    assert answer["path"] == str(runs_dir / "tiny.yaml")  # derived from output_dir


def test_a_folder_name_starting_with_a_dash_is_not_an_option(client, tmp_path):
    from lorakit_ui.api_labels import label_command

    command = label_command({"data_dir": "--help", "labeler": "filename"})
    assert command[-2:] == ["--", "--help"]
    answer = client.post("/api/label", json={"data_dir": "--help", "labeler": "filename"}).json()
    assert answer["ok"] is False and "Usage" not in answer["output"]


def test_the_adapter_folder_downloads_as_one_zip(client, runs_dir):
    import io
    import zipfile

    out = fake_run(runs_dir, "llm", "finished", [1.0])
    (out / "adapter").mkdir()
    (out / "adapter" / "adapter_config.json").write_text("{}")
    (out / "adapter" / "adapter_model.safetensors").write_bytes(b"w")
    assert client.get("/api/runs/llm").json()["downloads"][0] == "adapter/"
    got = client.get("/runs/llm/zip/adapter")
    assert got.headers["content-disposition"] == 'attachment; filename="adapter.zip"'
    names = zipfile.ZipFile(io.BytesIO(got.content)).namelist()
    assert sorted(names) == ["adapter/adapter_config.json", "adapter/adapter_model.safetensors"]


def test_a_table_with_the_image_and_caption_aliases_saves_as_training_reads_it(client, images):
    """The page saves what training reads: the ``image``/``caption`` column aliases too."""
    from lorakit.app import read_metadata

    names = [f"img_{i:03d}.png" for i in range(4)]
    (images / "metadata.csv").write_text(
        "image,caption\n" + "".join(f"{n},a disc {i}\n" for i, n in enumerate(names))
    )
    table = client.get("/api/metadata", params={"data_dir": str(images)}).json()
    assert table["columns"][:2] == ["image", "caption"], table
    table["rows"][0]["caption"] = "a red disc"
    saved = client.post("/api/metadata", json={**table, "data_dir": str(images)}).json()
    assert saved["ok"], saved
    assert read_metadata(images / "metadata.csv")[1][0]["caption"] == "a red disc"
    wrong = {**table, "data_dir": str(images), "rows": [{"image": "nope.png", "caption": "x"}]}
    assert "no image named nope.png" in client.post("/api/metadata", json=wrong).json()["error"]


def test_a_grpo_run_page_shows_its_completions_and_rewards(client, runs_dir):
    """GRPO writes ``samples/completions-step-N.jsonl`` every log step; the run page shows
    the newest as text, completions and rewards included."""
    out = fake_run(runs_dir, "grpo", "running", [0.1, 0.2])
    row = {"step": 2, "prompt": "Dose of X?", "completion": "<answer>5 mg</answer>"}
    row["rewards"] = {"answer_match": 1.0, "think_format": 0.0}
    (out / "samples" / "completions-step-2.jsonl").write_text(json.dumps(row) + "\n")
    data = client.get("/api/runs/grpo").json()
    [text] = [s for s in data["samples"] if s["path"] == "samples/completions-step-2.jsonl"]
    assert text["kind"] == "text" and "<answer>5 mg</answer>" in text["text"]
    assert "answer_match" in text["text"]
