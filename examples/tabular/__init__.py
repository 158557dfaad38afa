"""The tabular example: a manager plans impute -> scale -> select -> model by goal (see docs/tabular.md)."""
