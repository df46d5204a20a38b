"""Reports from saved results."""
from stguide.report.markdown import method_table, render_markdown, write_report

__all__ = ["method_table", "render_markdown", "write_report"]
