"""`cai eval`: the job (`run`), its judge, pure statistics (`metrics`), the metrics summary,
neutral ability for the alignment tax, and the report."""
