"""AI feedback: the multiple-choice scoring core (`judge`), the soft-label math (`labels`), the
`cai label` job (`label`) and its quality check (`check`)."""
