"""The composition table of this folder (runs A, B, C of composition-2026-12-05e's run.sh; 2026-12-06 evening,
the AMD EPYC without AVX-512, float32 target; code of 19979c4: chunked stored-weight passes, per-step bookkeeping
cut), printed by the earlier report's script."""
import runpy
from pathlib import Path

here = Path(__file__).parent
runpy.run_path(str(here.parents[1] / "composition-2026-11-26" / "make_table.py"))["print_tables"](here)
