"""From run folders to answers: paired statistics, tables, figures and verdicts."""
