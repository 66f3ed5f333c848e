"""What the notebooks call: cached experiment grids, their tables and conclusions, plots, and the
files they write. The methods and their evaluation live one level up; nothing there imports this."""
