"""`cai eval`: its options (`config`), the job (`job`) and its two passes (`answers`, then the
judge's `judging`), pure statistics (`metrics`), the metrics summary (`summary`), neutral ability
for the alignment tax (`ability`), and the report (`report`)."""
