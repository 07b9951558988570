"""RecBole atomic files (``NAME.inter``, ``NAME.item``, ``NAME.user``): header fields, and the
checks a run makes on them before RecBole reads them.

RecBole finds a missing dataset or column deep inside its loading (it tries to download an
unknown dataset from the internet, or fails with ``[timestamp] is not exist in interaction``
after logging the whole config). :func:`check_dataset_files` finds the same problems first and
says which file, which field and what to do.
"""

from pathlib import Path

SUFFIXES = ("inter", "item", "user")


def atomic_file_fields(path, separator="\t", encoding=None):
    """The field names of a RecBole atomic file, from its ``name:type`` header line."""
    with open(path, "r", encoding=encoding or "utf-8") as f:
        header = f.readline().rstrip("\r\n")
    return [column.split(":")[0] for column in header.split(separator or "\t")]


def dataset_folder(config):
    """The folder RecBole reads ``config['dataset']`` from (``data_path`` already ends with it)."""
    return Path(config["data_path"])


def check_dataset_files(config):
    """Raise ``FileNotFoundError`` / ``ValueError`` for a dataset RecBole could not load.

    Checks that ``DATASET.inter`` exists, that every column ``load_col`` names is in its file's
    header, and that a split ordered by time (``eval_args['order'] == 'TO'``, every sequential
    model) has the time field. A dataset RecBole knows how to download (its ``url.yaml``) and
    that is not there yet is left to RecBole.
    """
    folder, name = dataset_folder(config), config["dataset"]
    inter = folder / f"{name}.inter"
    if not folder.exists() and name in downloadable_datasets():
        return
    if not inter.is_file():
        raise FileNotFoundError(
            f"dataset {name!r}: {inter} not found. Prepare it first (mind-recbole prepare amazon --reviews FILE "
            f"--dataset {name}), or point data_path at the folder that holds {name}/{name}.inter"
        )
    separator, encoding = config["field_separator"], config["encoding"]
    load_col = config["load_col"] if isinstance(config["load_col"], dict) else {}
    for suffix, columns in load_col.items():
        path = folder / f"{name}.{suffix}"
        if not path.is_file():
            if suffix in SUFFIXES[1:]:
                raise FileNotFoundError(
                    f"load_col['{suffix}'] reads {path}, which does not exist; prepare the dataset with the "
                    f"file (for Amazon data, --meta writes {name}.item) or remove '{suffix}' from load_col"
                )
            continue
        present = atomic_file_fields(path, separator, encoding)
        missing = [column for column in columns or [] if column not in present]
        if missing:
            raise ValueError(
                f"load_col['{suffix}'] reads {missing} from {path}, which has no such field "
                f"(its fields: {', '.join(present)}); fix load_col in your config"
            )
    time_field = config["TIME_FIELD"]
    ordered_by_time = (config["eval_args"] or {}).get("order") == "TO"
    loaded_inter = load_col.get("inter") if load_col else None
    if ordered_by_time and time_field:
        present = atomic_file_fields(inter, separator, encoding)
        if time_field not in present:
            raise ValueError(
                f"{inter} has no time field {time_field!r} (its fields: {', '.join(present)}), but the split is "
                "ordered by time (eval_args order: TO, which sequential models need). Prepare the data with "
                "review times, or set TIME_FIELD to the file's time column"
            )
        if loaded_inter is not None and time_field not in loaded_inter:
            raise ValueError(
                f"the split is ordered by time, but load_col['inter'] ({', '.join(loaded_inter)}) does not load "
                f"the time field {time_field!r} of {inter}; add it to load_col['inter']"
            )


def downloadable_datasets():
    """The dataset names RecBole 1.2.1 downloads when their folder is missing."""
    import recbole
    import yaml

    with open(Path(recbole.__file__).parent / "properties" / "dataset" / "url.yaml", encoding="utf-8") as f:
        return set(yaml.safe_load(f) or {})
