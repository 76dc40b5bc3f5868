"""storage.artifacts_url: stages mirror their outputs to S3 (a real SeaweedFS server)."""

from excon.cli import main


def test_prepare_mirrors_the_prepared_data(s3_env, bucket, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sets = [
        "--set",
        f"storage.artifacts_url=s3://{bucket}/study",
        "--set",
        "data.limit_per_class=5",
    ]
    assert main(["prepare", *sets]) == 0
    listed = s3_env.client().list_objects_v2(Bucket=bucket, Prefix="study/")["Contents"]
    keys = {o["Key"] for o in listed}
    assert "study/data/prepared/animals/manifest.json" in keys
    assert "study/data/prepared/animals/train_images.npy" in keys


def test_missing_bucket_stops_before_any_work(s3_env, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    sets = ["--set", "storage.artifacts_url=s3://no-such-bucket-here/study"]
    assert main(["prepare", *sets]) == 2
    err = capsys.readouterr().err.strip()
    assert "no-such-bucket-here" in err and "\n" not in err
    assert not (tmp_path / "data").exists()
