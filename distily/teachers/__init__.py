"""Teacher sources: where a run's teacher outputs come from (``source.py`` says what each provides)."""
