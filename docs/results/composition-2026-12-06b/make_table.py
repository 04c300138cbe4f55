"""The composition table of this folder (runs A, B, C; 2026-12-06, second session: the AMX linears' streaming 32-row passes), printed by the earlier report's script."""
import runpy
from pathlib import Path

here = Path(__file__).parent
runpy.run_path(str(here.parent / "composition-2026-11-26" / "make_table.py"))["print_tables"](here)
