"""Fine-tuning: init_from / init_modules, Hub ids, freezing and per-group learning rates,
labelled text (classes and per-byte labels), text predictions of runs. Tiny models only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from perceptio import Perceiver, PerceiverConfig, create_model
from perceptio.cli import main
from perceptio.data.text import TextSpansConfig, TextTableConfig, byte_labels, encode_texts
from perceptio.data import DataConfig
from perceptio.tasks.runs import labelled_spans, load_run, predict_run
from perceptio.train.experiment import experiment_from_dict
from perceptio.train.optim import freeze, param_groups
from perceptio.train.experiment import ParamGroupConfig
from perceptio.train.trainer import Trainer
from perceptio.train.transfer import init_from, transfer_state

L = 16
ENCODER = {"num_latents": 4, "num_latent_channels": 16, "num_self_attends_per_block": 1,
           "num_self_attend_heads": 2, "num_cross_attend_heads": 1}
TEXT = {"kind": "text", "vocab_size": 262, "max_seq_len": L, "num_channels": 8}


def mlm_config() -> dict:
    return {"input_adapter": TEXT, "encoder": ENCODER,
            "decoder": {"kind": "cross_attention", "queries": {"kind": "trainable", "num_queries": L, "num_channels": 8},
                        "v_channels": 8},
            "output_adapter": {"kind": "tied_embedding"}}


def classifier_config(classes: int = 3) -> dict:
    return {"input_adapter": TEXT, "encoder": ENCODER,
            "decoder": {"kind": "cross_attention", "queries": {"kind": "trainable", "num_queries": 1, "num_channels": 16},
                        "use_query_residual": True, "output_channels": classes},
            "output_adapter": {"kind": "classification"}}


def tagger_config(labels: int) -> dict:
    return {"input_adapter": TEXT, "encoder": ENCODER,
            "decoder": {"kind": "cross_attention", "queries": {"kind": "trainable", "num_queries": L, "num_channels": 8},
                        "output_channels": labels}}


def build(config: dict, seed: int = 0) -> Perceiver:
    torch.manual_seed(seed)
    return Perceiver(PerceiverConfig.from_dict(config))


@pytest.fixture
def mlm_dir(tmp_path) -> Path:
    build(mlm_config(), seed=1).save_pretrained(tmp_path / "mlm")
    return tmp_path / "mlm"


# -- init_from / init_modules ------------------------------------------------------------------
def test_init_modules_loads_the_named_modules_and_keeps_a_new_head(mlm_dir):
    source = Perceiver.from_pretrained(mlm_dir).state_dict()
    model = build(classifier_config())
    head = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("decoder")}
    report = init_from(model, mlm_dir, ["input_adapter", "encoder"])
    state = model.state_dict()
    for name in report.loaded:
        assert torch.equal(state[name], source[name])
    assert {n.split(".")[0] for n in report.loaded} == {"input_adapter", "encoder"}
    assert all(torch.equal(state[k], v) for k, v in head.items())  # the new head keeps its initialisation
    assert set(report.new) == set(head)
    assert "decoder.query_builder.queries.pos_embs" in report.left_out and "output_adapter.bias" in report.left_out
    summary = report.summary()
    assert "loaded   " in summary and "encoder.cross_attends" in summary and "left out" in summary


def test_default_loads_everything_that_fits_and_reports_mismatches(mlm_dir):
    model = build(tagger_config(labels=4))  # same queries as the MLM, a different projection
    report = init_from(model, mlm_dir)
    assert "decoder.query_builder.queries.pos_embs" in report.loaded
    assert "decoder.output.weight" in report.new and "decoder.output.weight" not in report.loaded
    # the tagger's values are 16 wide (the latents'), the MLM's 8
    assert report.mismatched["decoder.cross_attend.attention.v.weight"] == "(16, 16) here vs (8, 16) in the source"
    assert "output_adapter.bias" in report.left_out  # the tied-embedding bias has no place here
    with pytest.raises(ValueError, match=r"model.init_modules: decoder.cross_attend.attention.v.weight \(shape "
                                         r"\(16, 16\)\) has shape \(8, 16\) in the source"):
        init_from(build(tagger_config(labels=4)), mlm_dir, ["decoder"])


def test_a_shape_mismatch_in_a_named_module_names_the_parameter(mlm_dir):
    wide = mlm_config()
    wide["encoder"] = {**ENCODER, "num_latents": 6}
    with pytest.raises(ValueError, match=r"encoder.latents.pos_embs \(shape \(6, 16\)\) has shape \(4, 16\) in the "
                                         r"source"):
        init_from(build(wide), mlm_dir, ["encoder"])
    report = init_from(build(wide), mlm_dir)  # by default: left out, and said so
    assert report.mismatched["encoder.latents.pos_embs"] == "(6, 16) here vs (4, 16) in the source"
    assert "encoder.latents.pos_embs: shape (6, 16) here vs (4, 16) in the source" in report.summary()


def test_bad_init_from_and_init_modules_are_one_clear_error(mlm_dir, tmp_path):
    model = build(classifier_config())
    with pytest.raises(ValueError, match=r"the model has no module 'encodr'; its modules are \['input_adapter', "
                                         r"'encoder', 'decoder'\]"):
        init_from(model, mlm_dir, ["encodr"])
    with pytest.raises(FileNotFoundError, match="model.init_from: .*nowhere does not exist; expected a perceptio "
                                                "model directory, a training run directory"):
        init_from(model, tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="model.init_from: .*empty is not a model perceptio can read"):
        init_from(model, tmp_path / "empty")
    image = build({**classifier_config(), "input_adapter": {"kind": "image", "image_shape": [4, 4, 1],
                                                           "prep_type": "pixels", "position": {"num_bands": 1}},
                   "encoder": {**ENCODER, "num_latents": 3, "num_latent_channels": 12}})
    with pytest.raises(ValueError, match="fits none of the model's modules"):
        transfer_state(image, Perceiver.from_pretrained(mlm_dir).state_dict())


# -- Hub ids -------------------------------------------------------------------------------------
def hub_cache(root: Path, repo: str, model) -> Path:
    """A Hugging Face cache holding ``repo`` at one commit, as huggingface_hub lays it out."""
    folder = root / f"models--{repo.replace('/', '--')}"
    commit = "0" * 40
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    model.save_pretrained(folder / "snapshots" / commit)
    return folder / "snapshots" / commit


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("huggingface_hub")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    config = transformers.PerceiverConfig(num_latents=4, d_latents=16, d_model=8, num_blocks=1,
                                          num_self_attends_per_block=1, num_self_attention_heads=2,
                                          num_cross_attention_heads=1, max_position_embeddings=L)
    hf = transformers.PerceiverForMaskedLM(config).eval()
    directory = hub_cache(tmp_path / "hub", "deepmind/language-perceiver", hf)
    return hf, directory


def test_hub_ids_resolve_through_the_offline_cache(offline_hub):
    from perceptio import from_transformers

    hf, directory = offline_hub
    ids = torch.randint(6, 262, (2, L), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = from_transformers(directory).perceiver(ids).logits
        for model in (Perceiver.from_pretrained("deepmind/language-perceiver"),
                      create_model("language-perceiver", pretrained=True)):
            torch.testing.assert_close(model.eval()(ids).logits, expected, rtol=0, atol=0)
        torch.testing.assert_close(hf(inputs=ids).logits, expected, rtol=1e-4, atol=1e-4)
    # and as model.init_from
    report = init_from(build(classifier_config()), "deepmind/language-perceiver", ["input_adapter"])
    assert report.loaded == ["input_adapter.embedding.weight", "input_adapter.position.pos_embs"]


def test_a_missing_hub_id_offline_says_how_to_get_it(offline_hub):
    with pytest.raises(FileNotFoundError, match=r"deepmind/other: not in the Hugging Face cache .* and "
                                                r"HF_HUB_OFFLINE=1; download it once with `huggingface-cli download "
                                                r"deepmind/other`"):
        Perceiver.from_pretrained("deepmind/other")
    with pytest.raises(ValueError, match=r"pretrained=True\) loads the published weights"):
        create_model("language-perceiver", pretrained=True, num_latents=8)


# -- freezing and parameter groups -------------------------------------------------------------------
def test_freeze_and_param_groups_resolve_patterns():
    model = build(classifier_config())
    frozen = freeze(model, ["input_adapter", "encoder.cross_attends.*"])
    assert frozen and all(n.startswith(("input_adapter.", "encoder.cross_attends.")) for n in frozen)
    groups = param_groups(model, 0.1, 1e-3, [ParamGroupConfig(params="encoder.*", lr=1e-4)])
    names = {g["name"]: g["names"] for g in groups}
    assert all(n.startswith("encoder.latent") for n in names["param_groups[0] ['encoder.*']"])
    assert {g["base_lr"] for g in groups if g["name"].startswith("param_groups[0]")} == {1e-4}
    trained = {n for g in groups for n in g["names"]}
    assert not trained & set(frozen) and trained | set(frozen) == {n for n, _ in model.named_parameters()}
    assert all(g["weight_decay"] == 0.0 for g in groups if "(no decay)" in g["name"])
    with pytest.raises(ValueError, match=r"train.freeze: 'decodr.\*' matches no parameter; parameter names start "
                                         r"with \['decoder', 'encoder', 'input_adapter'\]"):
        freeze(model, ["decodr.*"])
    with pytest.raises(ValueError, match="no parameter is left to train"):
        param_groups(model, 0.1, 1e-3) if freeze(model, ["*"]) else None


# -- labelled text -----------------------------------------------------------------------------------
TOPICS = {"sea": ["the ship sails over the waves", "fish swim in the deep blue water", "the tide comes in"],
          "sky": ["birds fly over the clouds", "the sun shines in the sky", "stars at night above us"]}


def write_table(path: Path, rows: list[tuple[str, str]]) -> None:
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps({"sentence": t, "topic": y}) + "\n" for t, y in rows))
    else:
        sep = "\t" if path.suffix == ".tsv" else ","
        path.write_text(f"sentence{sep}topic\n" + "".join(f'"{t}"{sep}{y}\n' for t, y in rows))


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl"])
def test_text_table_reads_every_format_with_the_padding_mask(tmp_path, suffix):
    rows = [(t, y) for y, texts in TOPICS.items() for t in texts] * 3
    write_table(tmp_path / f"data{suffix}", rows)
    splits = TextTableConfig(path=str(tmp_path / f"data{suffix}"), text="sentence", label="topic", max_length=L,
                             val_fraction=0.2, test_fraction=0.2).load()
    assert splits.info.classes == ["sea", "sky"] and splits.info.extras == {"text": True, "max_length": L}
    n = len(splits.train) + len(splits.val) + len(splits.test)
    assert n == len(rows)
    ids, mask = splits.train.fields["inputs"], splits.train.fields["input_mask"]
    assert ids.shape[1] == L and mask.dtype == torch.bool
    assert torch.equal(mask, ids != 0)  # cut to L bytes, padded with pad (0) and masked out


def test_text_errors_name_the_file_the_row_and_the_class(tmp_path):
    (tmp_path / "bad.csv").write_text("text,label\nfine,a\nno label,\n")
    with pytest.raises(ValueError, match=r"bad.csv: line 3: missing value in label column 'label'"):
        TextTableConfig(path=str(tmp_path / "bad.csv")).load()
    (tmp_path / "latin1.tsv").write_bytes("text\tlabel\ncaf\xe9\ta\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1.tsv: not UTF-8 text \(byte 14: b'\\xe9'\)"):
        TextTableConfig(path=str(tmp_path / "latin1.tsv")).load()
    write_table(tmp_path / "train.csv", [("one", "a"), ("two", "a"), ("three", "b"), ("four", "b")])
    write_table(tmp_path / "test.csv", [("five", "c")])
    with pytest.raises(ValueError, match=r"class 'c' is in the test split \(1 examples\) but not in the training split"):
        TextTableConfig(path=str(tmp_path / "train.csv"), test_path=str(tmp_path / "test.csv"), text="sentence",
                        label="topic", val_fraction=0.0).load()
    folder = tmp_path / "folder"
    for c in ("a", "b"):
        (folder / c).mkdir(parents=True)
    (folder / "a" / "1.txt").write_text("hello")
    with pytest.raises(ValueError, match=r"class folder .*folder/b has no text files"):
        DataConfig.from_dict({"kind": "text_folder", "path": str(folder)}).load()
    (folder / "b" / "1.txt").write_bytes(b"ok \xff")
    with pytest.raises(ValueError, match=r"folder/b/1.txt: not UTF-8 text \(byte 3: b'\\xff'\)"):
        DataConfig.from_dict({"kind": "text_folder", "path": str(folder)}).load()


def test_byte_labels_follow_character_offsets_through_multibyte_text():
    text = "é is Ünïcode"
    labels = byte_labels(text, [(0, 1, 1), (5, 12, 2)], 64, "x")
    assert len(labels) == len(text.encode()) and labels[:2] == [1, 1] and labels[2] == 0
    assert labels[7:] == [2] * (len(text.encode()) - 7)
    assert labelled_spans(text, labels, ["O", "A", "B"]) == [[0, 1, "A"], [5, 12, "B"]]
    with pytest.raises(ValueError, match=r"span \[3, 6\) overlaps another span"):
        byte_labels(text, [(0, 4, 1), (3, 6, 2)], 64, "x")


# -- end to end: a text MLM run -> a fine-tuned classifier and a tagger --------------------------------
def run(tmp_path: Path, name: str, data: dict, model: dict, steps: int = 4, **sections) -> Path:
    exp = {"name": name, "data": data, "model": model,
           "optim": {"optimizer": "adamw", "lr": 1e-2, "warmup_steps": 0, "schedule": "constant",
                     **sections.pop("optim", {})},
           "train": {"steps": steps, "batch_size": 4, "eval_every": 1000, "checkpoint_every": 1000, "threads": 1,
                     **sections.pop("train", {})},
           "logging": {"progress": False, "plots": False, "log_every": 1}}
    Trainer(experiment_from_dict(exp), tmp_path / name).fit()
    return tmp_path / name


def test_fine_tuning_a_run_with_a_frozen_encoder_and_text_predictions(tmp_path, capsys):
    pre = run(tmp_path, "mlm", {"kind": "bytes_mlm", "seq_len": L, "max_bytes": 4000}, {"perceiver": mlm_config()})
    source = Perceiver.from_pretrained(pre / "checkpoints" / "best").state_dict()
    rows = [(t, y) for y, texts in TOPICS.items() for t in texts] * 4
    write_table(tmp_path / "topics.csv", rows)
    data = {"kind": "text_table", "path": str(tmp_path / "topics.csv"), "text": "sentence", "label": "topic",
            "max_length": L}
    ft = run(tmp_path, "ft", data, {"perceiver": classifier_config(2), "init_from": str(pre),
                                    "init_modules": ["input_adapter", "encoder"]},
             train={"freeze": ["input_adapter", "encoder.cross_attends"]},
             optim={"param_groups": [{"params": "encoder.latent*", "lr": 1e-3}]})
    out = capsys.readouterr().out
    assert f"init_from {pre}:" in out and "loaded   " in out and "new      " in out and "left out" in out
    assert "frozen (" in out and "param_groups[0] ['encoder.latent*']" in out and "lr 0.001" in out
    tuned = Perceiver.from_pretrained(ft / "checkpoints" / "best").state_dict()
    for name, value in tuned.items():
        if name.startswith(("input_adapter.", "encoder.cross_attends.")):
            assert torch.equal(value, source[name]), name  # frozen: exactly the pretrained weights
        elif name.startswith("encoder.latent_blocks.0.layers.0.mlp.1.weight"):
            assert not torch.equal(value, source[name])  # trained
    results = predict_run(load_run(ft), ["the ship sails", str(tmp_path / "topics.csv")], top_k=2)
    assert results[0]["input"] == "the ship sails" and set(results[0]["top"]) == {"sea", "sky"}
    assert results[0]["label"] in ("sea", "sky") and len(results) == 2
    capsys.readouterr()
    assert main(["predict", "run", str(ft), "the ship sails", "--top-k", "1"]) == 0
    line = json.loads(capsys.readouterr().out.strip())
    assert line["input"] == "the ship sails" and line["label"] == results[0]["label"] and len(line["top"]) == 1
    assert main(["predict", str(ft), "the ship sails", "--top-k", "1"]) == 0  # the shorthand: a run directory first
    assert json.loads(capsys.readouterr().out.strip()) == line


def test_token_classification_run_predicts_spans(tmp_path):
    lines = [{"text": "Guido wrote Python", "spans": [[0, 5, "PER"], [12, 18, "LANG"]]},
             {"text": "Ada wrote Ada", "spans": [[0, 3, "PER"], {"start": 10, "end": 13, "label": "LANG"}]},
             {"text": "Linus wrote C", "spans": [[0, 5, "PER"], [12, 13, "LANG"]]}] * 4
    (tmp_path / "spans.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    data = {"kind": "text_spans", "path": str(tmp_path / "spans.jsonl"), "max_length": L, "test_fraction": 0.25}
    splits = TextSpansConfig.from_dict(data).load()
    assert splits.info.classes == ["O", "LANG", "PER"] and splits.info.objective == "token_classification"
    targets = splits.train.fields["targets"]
    assert ((targets == -100) == ~splits.train.fields["input_mask"]).all()
    tagger = run(tmp_path, "tagger", data, {"perceiver": tagger_config(3)}, steps=3)
    metrics = json.loads((tagger / "metrics.json").read_text())["test"]
    assert {"accuracy", "PER_f1", "LANG_recall", "O_precision", "f1_macro"} <= set(metrics)
    assert 0.0 <= metrics["f1_macro"] <= 1.0
    (result,) = predict_run(load_run(tagger), ["Guido wrote C"])
    assert isinstance(result["spans"], list) and all(len(s) == 3 for s in result["spans"])
    with pytest.raises(ValueError, match=r"has 3 labels \['O', 'LANG', 'PER'\] for each of 16 bytes but the model "
                                         r"outputs \(16, 5\)"):
        run(tmp_path, "bad", data, {"perceiver": tagger_config(5)}, steps=1)


def test_encode_texts_cuts_and_pads():
    ids, mask = encode_texts(["ab", "x" * 40], 8)
    assert ids.shape == (2, 8) and mask.sum(1).tolist() == [2, 8]


def test_digits_subsets_and_few_examples():
    splits = DataConfig.from_dict({"kind": "digits", "digits": [7, 3], "train_examples": 20}).load()
    assert splits.info.classes == ["7", "3"] and len(splits.train) == 20
    assert set(splits.test.fields["targets"].tolist()) == {0, 1}


def test_multitask_queries_sample_one_task_per_step_and_report_each(tmp_path):
    write_table(tmp_path / "topics.csv", [(t, y) for y, texts in TOPICS.items() for t in texts] * 4)
    write_table(tmp_path / "length.csv", [(t, str(len(t.split()) % 3)) for texts in TOPICS.values() for t in texts] * 4)
    table = {"kind": "text_table", "text": "sentence", "label": "topic", "max_length": L}
    data = {"kind": "multitask", "tasks": {"topic": {**table, "path": str(tmp_path / "topics.csv")},
                                           "length": {**table, "path": str(tmp_path / "length.csv")}}}
    splits = DataConfig.from_dict(data).load()
    assert splits.info.extras["tasks"] == {"topic": ["sea", "sky"], "length": ["0", "1", "2"]}
    sampler = splits.make_sampler(4, 0)
    tasks = splits.train.fields["task"]
    seen = set()
    for step in range(12):
        batch = sampler.indices(step)
        assert len(set(tasks[batch].tolist())) == 1  # one task per step
        seen |= set(tasks[batch].tolist())
        assert torch.equal(batch, splits.make_sampler(4, 0).indices(step))  # a function of the step
    assert seen == {0, 1}
    model = classifier_config(3)
    model["decoder"]["queries"]["num_queries"] = 2
    out = run(tmp_path, "multi", data, {"perceiver": model}, steps=4)
    metrics = json.loads((out / "metrics.json").read_text())["val"]
    assert {"topic_accuracy", "length_accuracy", "topic_loss", "accuracy", "task_mean_accuracy"} <= set(metrics)
    assert metrics["task_mean_accuracy"] == pytest.approx((metrics["topic_accuracy"] + metrics["length_accuracy"]) / 2)
    (result,) = predict_run(load_run(out), ["the sun"], top_k=1)
    assert set(result["tasks"]) == {"topic", "length"} and result["tasks"]["topic"]["label"] in ("sea", "sky")
    model["decoder"]["queries"]["num_queries"] = 1
    with pytest.raises(ValueError, match=r"has 2 tasks with up to 3 classes, but the model decodes 1 queries"):
        run(tmp_path, "bad", data, {"perceiver": model}, steps=1)


def test_the_transfer_configs_load():
    from perceptio.train.experiment import load_experiment

    for name in ("docs_topics", "digits_0to4", "digits_5to9"):
        load_experiment(name)
    scratch = load_experiment("docs_topics", ["model.init_from=null", "model.init_modules=null"])
    assert scratch.model.init_from is None
    with pytest.raises(Exception, match="model.init_modules selects modules of model.init_from"):
        load_experiment("docs_topics", ["model.init_from=null"])


def test_pydoc_topics_keep_the_bytes_mlm_split():
    mlm = DataConfig.from_dict({"kind": "bytes_mlm", "seq_len": 64}).load()
    topics = DataConfig.from_dict({"kind": "pydoc_topics", "max_length": 64}).load()
    assert topics.info.classes == ["debugger", "formatstrings", "string-methods", "strings", "types", "typesmapping"]
    rows = {name: {tuple(x) for x in mlm.get(name).fields["ids"].tolist()} for name in ("train", "val", "test")}
    for name in ("train", "val", "test"):  # every labelled sequence is in the same split of bytes_mlm
        assert {tuple(x) for x in topics.get(name).fields["inputs"].tolist()} <= rows[name]
    assert set(topics.test.fields["targets"].tolist()) == set(range(6))


def test_bytes_mlm_long_is_a_source_for_docs_topics():
    """The longer pretraining run transfers its input adapter and encoder into the text classifier
    (the docs' transfer table): the same sizes, and only its training settings differ from bytes_mlm."""
    from perceptio.train.experiment import load_experiment

    long, short = load_experiment("bytes_mlm_long"), load_experiment("bytes_mlm")
    assert long.train.steps > short.train.steps and long.data.mask_prob > short.data.mask_prob
    assert long.model.resolve().encoder == short.model.resolve().encoder
    source = Perceiver(long.model.resolve())
    classifier = Perceiver(load_experiment("docs_topics").model.resolve())
    report = transfer_state(classifier, source.state_dict(), ["input_adapter", "encoder"])
    assert report.loaded and all(n.split(".")[0] in ("input_adapter", "encoder") for n in report.loaded)
    theirs = source.state_dict()
    assert all(torch.equal(t, theirs[n]) for n, t in classifier.state_dict().items() if n in report.loaded)
