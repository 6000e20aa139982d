"""Models, the training loop, checkpoints, metrics and the oracle bound."""

from __future__ import annotations

import pickle

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from cxlspeaks.evaluate import binary_metrics, log_likelihood_ratio
from cxlspeaks.metrics import confusion_matrix, normalise_rows, roc_auc, roc_curve
from cxlspeaks.features import FEATURES, bin_sum
from cxlspeaks.models import MODELS, build_model
from cxlspeaks.train import CheckpointError, TrainConfig, load_checkpoint, save_checkpoint, train_attribute

SHAPE = (48, 40)


class Payload:
    """An arbitrary object: a checkpoint that pickles one must be refused by weights_only loading."""


@pytest.mark.parametrize("name", sorted(MODELS))
def test_forward_pass_shape_and_gradient(name):
    cls = MODELS[name]
    input_shape = (len(cls.inputs), *SHAPE)
    n_out = 3 if name == "paper_linear" else 1
    model = build_model(name, input_shape, n_out)
    x = torch.rand(2, *input_shape) * 5
    if "mask" in cls.inputs:
        x[:, cls.inputs.index("mask")] = 1.0
    out = model(x)
    expected = (2, 1, *SHAPE) if name == "paper_attention_heatmap" else (2, n_out)
    assert tuple(out.shape) == expected
    out.sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads)
    assert any(float(g.abs().sum()) > 0 for g in grads)


def test_hit_fcn_ignores_masked_bins_and_the_water_level():
    torch.manual_seed(0)
    model = build_model("hit_fcn", (2, *SHAPE), 1).eval()
    counts = torch.poisson(torch.full((1, 1, *SHAPE), 3.0))
    mask = torch.ones(1, 1, *SHAPE)
    mask[..., :, 5] = 0
    x = torch.cat([counts, mask], dim=1)
    hot = x.clone()
    hot[0, 0, :, 5] = 1e6          # anything in a masked bin is ignored
    assert torch.allclose(model(x), model(hot))


def test_bin_sum_adds_counts_and_pads():
    image = np.arange(7 * 5, dtype=np.float32).reshape(7, 5)
    binned = bin_sum(image, 2)
    assert binned.shape == (4, 3) and binned.sum() == image.sum()
    assert binned[0, 0] == image[:2, :2].sum() and binned[3, 2] == image[6, 4]


# ---------------------------------------------------------------------- a tiny training set
def _features(path, n_hits, n_empty, seed, energy=7000.0, clen=0.15, spot=40.0):
    """A features file like write_features makes: hits carry a few bright bins over Poisson water."""
    rng = np.random.default_rng(seed)
    counts = rng.poisson(2.0, size=(n_hits + n_empty, *SHAPE)).astype(np.float32)
    for i in range(n_hits):
        for _ in range(3):
            counts[i, rng.integers(SHAPE[0]), rng.integers(SHAPE[1])] += spot
    with h5py.File(path, "w") as h5:
        g = h5.create_group(FEATURES)
        g["counts"] = counts
        g["signal"] = np.zeros_like(counts)
        g["mask_fraction"] = np.ones(SHAPE, np.float32)
        g["radius_m"] = np.hypot(*np.meshgrid(np.arange(SHAPE[0]) - SHAPE[0] / 2, np.arange(SHAPE[1]) - SHAPE[1] / 2,
                                              indexing="ij")).astype(np.float32) * 3e-4
        g["has_peaks"] = np.arange(n_hits + n_empty) < n_hits
        g.attrs.update(photon_energy_ev=energy, clen_m=clen, bin_factor=4, dataset="x")
    return path


@pytest.fixture()
def training_set(tmp_path):
    features = {"a": _features(tmp_path / "a.h5", 24, 24, 1), "b": _features(tmp_path / "b.h5", 24, 24, 2,
                                                                            energy=8000.0)}
    rows = [(d, f, "test" if f % 5 == 0 else "train") for d in features for f in range(48)]
    split = tmp_path / "split.csv"
    pd.DataFrame(rows, columns=["dataset", "frame", "subset"]).to_csv(split, index=False)
    return features, split


def test_short_training_lowers_the_loss_and_checkpoints_round_trip(training_set, tmp_path):
    features, split = training_set
    config = TrainConfig(attribute="hit", model="hit_fcn", epochs=4, batch_size=8, learning_rate=3e-3, seed=3)
    train_attribute(config, features, split, tmp_path / "m.pt", tmp_path / "h.csv", progress=False)
    history = pd.read_csv(tmp_path / "h.csv")
    assert list(history["epoch"]) == [1, 2, 3, 4]
    assert history["train_loss"].iloc[-1] < history["train_loss"].iloc[0]
    checkpoint = load_checkpoint(tmp_path / "m.pt", "hit")
    assert checkpoint["epoch"] == 4 and checkpoint["class_names"] == ["no peaks", "peaks"]
    assert checkpoint["config"] == config.to_dict()
    model = build_model("hit_fcn", tuple(checkpoint["input_shape"]), 1)
    model.load_state_dict(checkpoint["model_state"])
    assert not (tmp_path / "m.pt.resume").exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_a_checkpoint_for_another_attribute_or_a_pickle_is_refused(training_set, tmp_path):
    features, split = training_set
    config = TrainConfig(attribute="photon_energy", model="paper_linear", target="photon_energy_ev", loss="ce",
                         optimizer="sgd", epochs=1, learning_rate=1e-4, scheduler="none")
    train_attribute(config, features, split, tmp_path / "e.pt", tmp_path / "e.csv", progress=False)
    assert load_checkpoint(tmp_path / "e.pt", "photon_energy")["class_values"] == [7000.0, 8000.0]
    with pytest.raises(CheckpointError, match="is for attribute 'photon_energy', not 'hit'"):
        load_checkpoint(tmp_path / "e.pt", "hit")
    torch.save({"model_state": {}, "optimizer_state": {}, "epoch": 1, "config": {"attribute": "hit"},
                "class_names": [], "evil": Payload()}, tmp_path / "pickled.pt")
    with pytest.raises(CheckpointError, match="not a loadable weights-only checkpoint") as info:
        load_checkpoint(tmp_path / "pickled.pt", "hit")
    assert "\n" not in str(info.value)
    (tmp_path / "junk.pt").write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "junk.pt")
    save_checkpoint(tmp_path / "partial.pt", model_state={}, epoch=1)
    with pytest.raises(CheckpointError, match="not a cxlspeaks checkpoint"):
        load_checkpoint(tmp_path / "partial.pt")


def test_training_resumes_after_a_kill_and_ends_where_an_uninterrupted_run_ends(training_set, tmp_path, monkeypatch):
    import cxlspeaks.train as train_module

    features, split = training_set
    config = TrainConfig(attribute="hit", model="hit_fcn", epochs=3, batch_size=8, seed=5)
    train_attribute(config, features, split, tmp_path / "full.pt", tmp_path / "full.csv", progress=False)

    real_save = train_module.save_checkpoint
    calls = []

    def save_then_die(path, **content):
        real_save(path, **content)
        calls.append(path)
        if str(path).endswith(".resume") and content["epoch"] == 1:
            raise KeyboardInterrupt("killed after epoch 1")

    monkeypatch.setattr(train_module, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_attribute(config, features, split, tmp_path / "cut.pt", tmp_path / "cut.csv", progress=False)
    assert (tmp_path / "cut.pt.resume").exists() and not (tmp_path / "cut.pt").exists()
    monkeypatch.setattr(train_module, "save_checkpoint", real_save)
    train_attribute(config, features, split, tmp_path / "cut.pt", tmp_path / "cut.csv", progress=False)
    full, cut = load_checkpoint(tmp_path / "full.pt"), load_checkpoint(tmp_path / "cut.pt")
    for key, value in full["model_state"].items():
        assert torch.equal(value, cut["model_state"][key]), key
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "full.csv"), pd.read_csv(tmp_path / "cut.csv"))


# ---------------------------------------------------------------------- metrics
def test_confusion_matrix_matches_a_hand_computed_example():
    truth = [0, 0, 0, 1, 1, 2, 2, 2, 2]
    predicted = [0, 1, 0, 1, 1, 2, 0, 2, 1]
    counts = confusion_matrix(truth, predicted, 3)
    np.testing.assert_array_equal(counts, [[2, 1, 0], [0, 2, 0], [1, 1, 2]])
    np.testing.assert_allclose(normalise_rows(counts), [[2 / 3, 1 / 3, 0], [0, 1, 0], [0.25, 0.25, 0.5]])
    metrics = binary_metrics([1, 1, 1, 0, 0], [1, 0, 1, 1, 0])
    assert (metrics["tpr"], metrics["fpr"], metrics["accuracy"]) == (2 / 3, 0.5, 0.6)


def test_roc_auc_against_hand_computed_values():
    labels = np.array([1, 1, 0, 1, 0, 0])
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.55, 0.1])
    # pairs (pos, neg) ranked correctly: 0.9 > all 3, 0.8 > all 3, 0.6 > 0.55 and 0.1: 8 of 9
    assert roc_auc(labels, scores) == pytest.approx(8 / 9)
    assert roc_auc([1, 0], [0.5, 0.5]) == pytest.approx(0.5)          # a tie counts one half
    fpr, tpr, _ = roc_curve(labels, scores)
    assert fpr[0] == tpr[0] == 0 and fpr[-1] == tpr[-1] == 1
    assert np.isnan(roc_auc([1, 1], [0.2, 0.3]))


def _oracle_aucs(signal_in_hits: bool, n: int = 150) -> float:
    rng = np.random.default_rng(11)
    background = np.full((48, 48), 0.05)
    scores, labels = [], []
    for i in range(2 * n):
        template = np.zeros((48, 48))
        for _ in range(4):
            y, x = rng.integers(2, 46, 2)
            template[y - 1:y + 2, x - 1:x + 2] += rng.uniform(1, 4)
        hit = i < n
        expected = background + (template if hit and signal_in_hits else 0)
        counts = rng.poisson(expected)
        scores.append(log_likelihood_ratio(counts, template, background))
        labels.append(hit)
    return roc_auc(np.array(labels), np.array(scores))


def test_oracle_separates_strong_peaks_from_empty_frames():
    assert _oracle_aucs(signal_in_hits=True) == 1.0


def test_oracle_is_at_chance_when_the_hits_carry_no_signal():
    auc = _oracle_aucs(signal_in_hits=False)
    assert abs(auc - 0.5) < 0.1   # 150 + 150 frames: the AUC's standard error is about 0.033


def test_log_likelihood_ratio_formula():
    counts = np.array([0, 3, 1, 5])
    signal = np.array([0.0, 2.0, 0.5, 0.0])
    background = np.array([0.1, 0.5, 0.0, 1.0])   # the third pixel is masked (b = 0): skipped
    expected = 3 * np.log(1 + 2.0 / 0.5) - 2.0
    assert log_likelihood_ratio(counts, signal, background) == pytest.approx(expected)


def test_config_schema_names_every_registered_frame_model():
    import yaml

    from conftest import REPO

    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    attribute = schema["properties"]["training"]["properties"]["attributes"]["additionalProperties"]
    # the paper's heatmap model maps frames to heatmaps, not attributes: it is trained under `peaks`
    assert set(attribute["properties"]["model"]["enum"]) == set(MODELS) - {"paper_attention_heatmap"}


@pytest.mark.parametrize("n,batch_size", [(21, 4), (8, 4), (5, 4), (1, 4), (33, 16), (17, 16)])
def test_batches_cover_every_frame_once_and_never_hold_a_single_frame(n, batch_size):
    """BatchNorm needs two frames per batch in training: a last batch of one frame joins the one before."""
    from cxlspeaks.train import batch_bounds

    bounds = batch_bounds(n, batch_size)
    covered = [i for start, stop in bounds for i in range(start, stop)]
    assert covered == list(range(n))
    assert all(stop - start >= 2 for start, stop in bounds) or n == 1
    assert all(stop - start <= batch_size + 1 for start, stop in bounds)
