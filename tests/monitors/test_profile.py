"""Reference profiles follow the model's metadata: its features (and predictions) only, with
the kinds it declares, whatever the training data's text looks like."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from monitors.evaluate import DetectorConfig, evaluate
from monitors.profile import (
    OTHER,
    PROFILE_FILE,
    FeatureProfile,
    ModelProfile,
    ProfileError,
    build_model_profile,
    build_profile,
    load_profile,
)
from monitors.windows import Windows, WindowSpec
from registry_client import FeatureSpec, ModelMetadata
from tests.monitors._tabular import METADATA, draw, records, write_csv


def cli_build(
    tmp_path: Path, columns: dict[str, np.ndarray]
) -> tuple[Path, subprocess.CompletedProcess[str]]:
    version = tmp_path / "registry" / "tabular" / "1"
    version.mkdir(parents=True)
    METADATA.dump(version)
    write_csv(tmp_path / "train.csv", columns)
    done = subprocess.run(
        [sys.executable, "-m", "monitors", "profile", "build", "--registry", str(tmp_path / "registry"),
         "--model", "tabular", "--version", "1", "--csv", str(tmp_path / "train.csv")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return version, done


def test_profile_build_profiles_the_models_features_and_predictions_only(tmp_path: Path) -> None:
    version, done = cli_build(tmp_path, draw(np.random.default_rng(0), 3000))
    assert done.returncode == 0, done.stderr
    assert "ignored" in done.stdout
    assert "['id', 'timestamp', 'target']" in done.stdout
    profile = load_profile(version)
    assert profile is not None
    assert set(profile.features) == {f.name for f in METADATA.features} | {"prediction:label"}
    kinds = {name: f.kind for name, f in profile.features.items()}
    assert kinds == {
        "age": "numeric", "income": "numeric", "clicks": "numeric", "plan": "categorical",
        "member": "categorical", "colour": "categorical", "prediction:label": "numeric",
    }  # fmt: skip
    assert set(profile.features["plan"].categories) == {"1", "2", "3"}  # not "1.0"
    assert set(profile.features["member"].categories) == {"true", "false"}
    assert profile.features["member"].dtype == "bool"
    # few distinct values: a bin each, not one quantile bin for all
    assert len(profile.features["clicks"].counts) == 4
    assert len(profile.features["prediction:label"].counts) == 2
    assert min(profile.features["prediction:label"].counts) > 0


def test_a_feature_without_a_column_is_an_error_that_names_it(tmp_path: Path) -> None:
    columns = draw(np.random.default_rng(1), 100)
    del columns["plan"]
    version, done = cli_build(tmp_path, columns)
    assert done.returncode == 2
    assert "'plan'" in done.stderr
    assert not (version / PROFILE_FILE).exists()
    with pytest.raises(ProfileError, match="no column for the model's features \\['plan'\\]"):
        build_model_profile(METADATA, columns)
    with pytest.raises(ProfileError, match="declares no features"):
        build_model_profile(ModelMetadata(), columns)
    with pytest.raises(ProfileError, match="'income', row 2: 'lots' is not a number"):
        build_model_profile(
            METADATA,
            {
                **draw(np.random.default_rng(1), 3),
                "income": np.array(["1", "lots", "3"], dtype=object),
            },
        )


def test_live_values_land_in_the_categories_profiled_from_csv_text(tmp_path: Path) -> None:
    version, done = cli_build(tmp_path, draw(np.random.default_rng(2), 5000))
    assert done.returncode == 0, done.stderr
    profile = load_profile(version)
    assert profile is not None
    live = records(draw(np.random.default_rng(3), 1000))
    ((_, summary),) = Windows(WindowSpec("count", 1000, 1000), profile).add(live, [0] * 1000)
    for name in ("plan", "member", "colour"):
        assert OTHER not in summary.categories[name], name
        assert sum(summary.categories[name].values()) == 1000
    result = evaluate(summary, profile, DetectorConfig(), model="tabular", version="1",
                      window_id="w", start_time=0, end_time=1)  # fmt: skip
    assert result.status == "ok", result.drifted_features


def test_null_counts_as_missing_for_every_kind_of_feature(tmp_path: Path) -> None:
    version, done = cli_build(tmp_path, draw(np.random.default_rng(4), 3000))
    assert done.returncode == 0, done.stderr
    profile = load_profile(version)
    assert profile is not None
    live = records(draw(np.random.default_rng(5), 1000))
    for record in live[:300]:
        record["features"] = {name: [None] for name in record["features"]}
    for record in live[300:400]:
        record["features"]["colour"] = [""]  # what a null string input reaches the model as
    ((_, summary),) = Windows(WindowSpec("count", 1000, 1000), profile).add(live, [0] * 1000)
    result = evaluate(summary, profile, DetectorConfig(), model="tabular", version="1",
                      window_id="w", start_time=0, end_time=1)  # fmt: skip
    by_name = {f.name: f for f in result.features}
    for name in ("age", "income", "clicks", "plan", "member"):
        assert by_name[name].missing_rate == pytest.approx(0.3), name
        assert by_name[name].flags["missing"]
        assert by_name[name].drifted
    assert by_name["colour"].missing_rate == pytest.approx(0.4)
    assert not by_name["prediction:label"].flags["missing"]


def test_a_stored_profile_takes_the_metadatas_types(tmp_path: Path) -> None:
    # as profiles were built before types were read: "1.0" where the log says 1
    old = ModelProfile(features={
        "plan": FeatureProfile(kind="categorical", categories={"1.0": 60, "2.0": 30, "nan": 10}, rows=100),
        "member": FeatureProfile(kind="categorical", categories={"True": 30, "False": 70}, rows=100),
    })  # fmt: skip
    metadata = ModelMetadata(
        features=[
            FeatureSpec(name="plan", dtype="int", categorical=True),
            FeatureSpec(name="member", dtype="bool"),
        ]
    )
    metadata.dump(tmp_path)
    old.dump(tmp_path)
    profile = load_profile(tmp_path)
    assert profile is not None
    assert profile.features["plan"].categories == {"1": 60, "2": 30}
    assert profile.features["plan"].missing_rate == pytest.approx(0.1)
    assert profile.features["member"].categories == {"true": 30, "false": 70}
    # a declared categorical feature profiled as numeric cannot be judged: say so
    build_profile(
        {"plan": np.array([1.0, 2.0, 3.0] * 10), "member": np.zeros(30)}, {"member"}
    ).dump(tmp_path)
    with pytest.raises(ProfileError, match=r"'plan' is categorical in metadata\.json"):
        load_profile(tmp_path)


def test_records_the_gateway_writes_for_typed_inputs_match_a_profile_from_csv(
    tmp_path: Path,
) -> None:
    """A model with an input per feature (INT64, FP32, BOOL, BYTES), requests of 10 rows, one
    string null in ten (the model got ""): logged by the gateway's own record builder and packer,
    read by the monitor's columnar path."""
    from gateway.featurelog import RecordBuilder, RequestInfo, pack_messages
    from monitors.batch import RecordBatch, served_primaries
    from monitors.schema import decode_columns

    version, done = cli_build(tmp_path, draw(np.random.default_rng(6), 5000))
    assert done.returncode == 0, done.stderr
    profile = load_profile(version)
    assert profile is not None
    live = draw(np.random.default_rng(7), 2000)
    builder, records = RecordBuilder(), []
    for start in range(0, 2000, 10):
        part = slice(start, start + 10)
        colour = live["colour"][part].astype(object)
        colour[0] = ""  # a null, as the protocol hands it to the model
        inputs: dict[str, np.ndarray] = {
            "age": live["age"][part].astype(np.int64).reshape(-1, 1),
            "income": live["income"][part].astype(np.float32).reshape(-1, 1),
            "clicks": live["clicks"][part].astype(np.int64).reshape(-1, 1),
            "plan": live["plan"][part].astype(np.int64).reshape(-1, 1),
            "member": live["member"][part].reshape(-1, 1),
            "colour": colour.reshape(-1, 1),
        }
        records.append(builder.build(
            RequestInfo(f"r{start}", float(start), "tabular"), model="tabular", version="1",
            variant="default", role="primary", feature_input=None, feature_names=[], inputs=inputs,
            outputs={"label": live["prediction:label"][part].astype(np.int64)}, rows=10,
            latency_s=0.001, status="ok",
        ))  # fmt: skip
    parts = [
        part
        for offset, (_, value, _) in enumerate(pack_messages((b"tabular", r) for r in records))
        for part in served_primaries(decode_columns(value), offset)[0].values()
    ]
    batch = RecordBatch.from_parts(profile, parts)
    ((_, summary),) = Windows(WindowSpec("count", 2000, 2000), profile).add_batch(batch)
    assert summary.categories["member"] == {
        "true": int(live["member"].sum()),
        "false": int((~live["member"]).sum()),
    }
    assert OTHER not in summary.categories["plan"]
    assert summary.missing["colour"] == 200
    result = evaluate(summary, profile, DetectorConfig(), model="tabular", version="1",
                      window_id="w", start_time=0, end_time=1)  # fmt: skip
    judged = next(f for f in result.features if f.name == "colour")
    assert judged.missing_rate == pytest.approx(0.1)
    assert result.drifted_features == ["colour"], "only the rise in missing colours"


def test_infinities_in_training_data_count_in_the_outer_bins_and_spoil_no_statistic(
    tmp_path: Path,
) -> None:
    rng = np.random.default_rng(5)
    finite = rng.normal(10.0, 2.0, size=1000)
    values = np.concatenate([finite, [np.inf] * 30, [-np.inf] * 20, [np.nan] * 50])
    profile = build_profile({"x": values})
    x = profile.features["x"]
    edges = np.quantile(finite, np.linspace(0, 1, 11))
    assert x.bin_edges == pytest.approx(edges.tolist())
    expected = np.histogram(finite, edges)[0]
    expected[0] += 20  # -inf: below every edge
    expected[-1] += 30  # +inf: above every edge
    assert x.counts == expected.tolist()
    assert x.mean == pytest.approx(finite.mean())
    assert x.std == pytest.approx(finite.std())
    assert x.quantiles["p99"] == pytest.approx(np.quantile(finite, 0.99))
    assert x.missing_rate == pytest.approx(50 / 1100)
    profile.dump(tmp_path)  # finite numbers only: the stored profile reads back as it was
    assert ModelProfile.model_validate_json((tmp_path / PROFILE_FILE).read_bytes()) == profile
    only = build_profile({"y": np.array([np.inf, -np.inf, np.inf, np.nan])}).features["y"]
    assert sum(only.counts) == 3
    assert np.isfinite([*only.bin_edges, only.mean, only.std]).all()


def test_a_constant_feature_that_changes_is_seen_by_every_detector() -> None:
    rng = np.random.default_rng(6)
    profile = build_profile({"flag": np.zeros(5000), "x": rng.normal(size=5000)})
    flag = profile.features["flag"]
    assert flag.counts == [0, 5000, 0]  # below, the value itself, above

    def judge(values: np.ndarray) -> dict[str, bool]:
        record = {"time": 1.0, "rows": 500,
                  "features": {"flag": values.tolist(), "x": rng.normal(size=500).tolist()}}  # fmt: skip
        ((_, summary),) = Windows(WindowSpec("count", 500, 500), profile).add([record], [0])
        result = evaluate(summary, profile, DetectorConfig(), model="m", version="1",
                          window_id="w", start_time=0, end_time=1)  # fmt: skip
        feature = next(f for f in result.features if f.name == "flag")
        assert feature.psi >= 0
        return {**feature.flags, "drifted": feature.drifted}

    assert not any(judge(np.zeros(500)).values())
    for changed in (
        np.ones(500),
        np.full(500, -3.0),
        np.full(500, 0.25),
        np.r_[np.zeros(250), np.ones(250)],
    ):
        flags = judge(changed)
        assert flags["drifted"], changed[-1]
        assert [k for k in ("test", "psi", "js", "wasserstein") if not flags[k]] == []
    huge = build_profile({"c": np.full(10, 1e17)}).features["c"]
    assert huge.counts == [0, 10, 0]
    assert np.all(np.diff(huge.bin_edges) > 0)


def test_a_csv_or_model_file_that_cannot_be_read_is_one_line_and_exit_2(tmp_path: Path) -> None:
    # Before, each was a traceback: UnicodeDecodeError from the CSV reader, onnxruntime's
    # InvalidProtobuf from the model's outputs.
    version, done = cli_build(tmp_path, draw(np.random.default_rng(0), 10))
    assert done.returncode == 0, done.stderr
    (tmp_path / "train.csv").write_bytes(b"a,b\n\xff\xfe,1\n")
    for args, named in ((["--csv", str(tmp_path / "train.csv")], "train.csv"),
                        (["--demo"], "model.onnx")):  # fmt: skip
        if named == "model.onnx":
            (version / "model.onnx").write_bytes(b"not a model")
        done = subprocess.run(
            [sys.executable, "-m", "monitors", "profile", "build",
             "--registry", str(tmp_path / "registry"), "--model", "tabular", "--version", "1",
             *args],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stderr
        assert named in done.stderr
        assert done.stderr.count("\n") == 1
