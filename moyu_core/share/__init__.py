"""Sharing runs as files: export to a Parquet bundle (export.py, format.py), import untrusted
bundles after checking them (checks.py, importer.py), read a team folder of bundles in place
(team.py). The names below are the package's public API."""
from .checks import MAX_BUNDLE_BYTES, MAX_BUNDLE_MB, Checked, check_file
from .export import export_runs
from .importer import import_bundle, import_bytes
from .team import LayeredStore, TeamStore, local_store, open_store, team_dir

__all__ = ["MAX_BUNDLE_BYTES", "MAX_BUNDLE_MB", "Checked", "LayeredStore", "TeamStore", "check_file",
           "export_runs", "import_bundle", "import_bytes", "local_store", "open_store", "team_dir"]
