"""Tables and figures reach an object store in one PUT (atomic there), and a local disk by temp-then-rename."""

from __future__ import annotations

import boto3
import pandas as pd

from imaxt_pipeline.io.output import OutputStore


def test_tables_and_pngs_are_one_put_on_s3(s3_endpoint, s3_bucket):
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    # with versioning every key ever written stays listed, deleted or not: a temporary key would show
    out = OutputStore(f"s3://{s3_bucket}/o.zarr", {"endpoint_url": s3_endpoint})
    s3.put_bucket_versioning(Bucket=s3_bucket, VersioningConfiguration={"Status": "Enabled"})
    before = {v["Key"] for v in s3.list_object_versions(Bucket=s3_bucket).get("Versions", [])}
    out.write_table("cells", pd.DataFrame({"cell_id": [1, 2, 3]}))
    out.write_png("overlay", b"\x89PNG fake bytes")
    listing = s3.list_object_versions(Bucket=s3_bucket)
    written = [v["Key"] for v in listing.get("Versions", []) if v["Key"] not in before]
    assert sorted(written) == ["o.zarr/qc/overlay.png", "o.zarr/tables/cells.parquet"]  # one version each
    assert not listing.get("DeleteMarkers")  # nothing was written and then removed
    assert out.read_table("cells")["cell_id"].tolist() == [1, 2, 3]


def test_local_writes_leave_no_temporary_file(tmp_path):
    out = OutputStore(str(tmp_path / "o.zarr"))
    out.write_table("cells", pd.DataFrame({"cell_id": [1]}))
    out.write_table("cells", pd.DataFrame({"cell_id": [1, 2]}))  # replaced whole
    assert sorted(p.name for p in (tmp_path / "o.zarr" / "tables").iterdir()) == ["cells.parquet"]
    assert out.read_table("cells")["cell_id"].tolist() == [1, 2]
