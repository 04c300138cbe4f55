"""The composition table of this folder (runs A, B, C; 2026-12-06, third session: math and mixed continued with a 5-step unroll, the calibration refit at the default tree), printed by the earlier report's script."""
import runpy
from pathlib import Path

here = Path(__file__).parent
runpy.run_path(str(here.parent / "composition-2026-11-26" / "make_table.py"))["print_tables"](here)
