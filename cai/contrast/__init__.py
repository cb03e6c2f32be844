"""`cai contrast`: harmful requests and harmless look-alikes written from the constitution's
seeds by the feedback model, deduplicated, kept apart from the evaluation sets, and every
request of the set labelled P(decline) (`job`; options in `config`; the text handling in
`dedupe`)."""
