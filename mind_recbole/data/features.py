"""Per-id feature tables of a RecBole dataset, for the models' feature embeddings."""

import os

from mind_recbole.data.atomic_files import atomic_file_fields


def feature_table(dataset, source, fields):
    """Per-id feature tensors of ``fields`` from the dataset's ``.item`` or ``.user`` table.

    Row ``i`` of each tensor belongs to internal id ``i`` (RecBole aligns its feature tables that
    way; row 0 is padding). Raises ``ValueError`` naming the field and the missing file or column.
    """
    if not fields:
        return {}
    table = dataset.get_item_feature() if source == "item" else dataset.get_user_feature()
    config_key = "item_side_fields" if source == "item" else "user_profile_fields"
    tensors = {}
    for field in fields:
        if field not in table.columns:
            raise ValueError(missing_field_message(dataset, source, config_key, field, table.columns))
        if dataset.field2type[field].value not in ("token", "token_seq"):
            raise ValueError(
                f"{config_key}: field {field!r} is of type {dataset.field2type[field].value}; "
                "only token and token_seq fields can be embedded"
            )
        tensors[field] = table[field].long()
    return tensors


def missing_field_message(dataset, source, config_key, field, loaded):
    """Why ``field`` is not in the loaded ``.item`` / ``.user`` table: no file, not in it, or not loaded."""
    path = os.path.join(dataset.dataset_path, f"{dataset.dataset_name}.{source}")
    if not os.path.isfile(path):
        return (
            f"{config_key} names {field!r}, but the dataset has no {source} features: {path} does not exist; "
            f"remove {field!r} from {config_key} or add that file"
        )
    in_file = atomic_file_fields(path, dataset.config["field_separator"], dataset.config["encoding"])
    if field in in_file:
        return (
            f"{config_key} names {field!r}: {path} has it, but load_col['{source}'] does not load it "
            f"(loaded: {', '.join(loaded)}); add it to load_col['{source}']"
        )
    return (
        f"{config_key} names {field!r}, but {path} has no such field (its fields: {', '.join(in_file)}); "
        f"fix the name or remove it from {config_key}"
    )
