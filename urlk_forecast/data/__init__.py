"""Station data: the schema, readers, the synthetic default, training windows and scaling."""

from .schema import VARIABLES, SchemaError, convert_units, infer_frequency, make_dataset, validate

__all__ = ["VARIABLES", "SchemaError", "convert_units", "infer_frequency", "make_dataset", "validate"]
