"""From stored scores to what a reader sees: statistics, tables, Markdown, LaTeX, the HTML page,
figures, the leaderboard and the timing pass."""
