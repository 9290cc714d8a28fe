"""Scripts under benchmarks/ share the package's result helpers (machine, versions, commit, atomic JSON)."""

from morphlm.bench.common import (RESULTS_DIR, ROOT, git_commit, json_safe, machine_info, metadata,  # noqa: F401
                                  read_json, usable_cores, utc_timestamp, write_json)
