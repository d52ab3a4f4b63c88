"""What object storage a destination URL needs, so a missing filesystem fails with the package to install."""

from __future__ import annotations

from urllib.parse import urlsplit

#: URL scheme -> (what to pip install, how to name the Airflow connection in the URL). The schemes Airflow's
#: object storage gets from the three cloud providers; ``file://`` and plain paths need nothing.
_PROVIDERS: dict[str, tuple[str, str]] = {
    **dict.fromkeys(
        ("s3", "s3a", "s3n"), ("apache-airflow-providers-amazon[s3fs]", "s3://<aws_conn_id>@<bucket>/<path>")
    ),
    **dict.fromkeys(("gs", "gcs"), ("apache-airflow-providers-google", "gs://<gcp_conn_id>@<bucket>/<path>")),
    **dict.fromkeys(
        ("abfs", "abfss", "az", "adl"),
        ("apache-airflow-providers-microsoft-azure", "abfs://<wasb_conn_id>@<container>/<path>"),
    ),
}


#: How Airflow (2.11 and 3.x) and fsspec say that no filesystem serves a URL's scheme.
_SIGNS = ("No filesystem registered", "Unsupported filesystem", "requires the s3fs library")


def missing_filesystem_hint(destination: str, error: BaseException) -> str | None:
    """A fix for ``error`` (raised opening ``destination``) when it means no filesystem serves its scheme; else None."""
    text = str(error)
    if not any(sign in text for sign in _SIGNS):
        return None
    scheme = urlsplit(destination).scheme.lower()
    if scheme not in _PROVIDERS:
        return (
            f"Airflow has no filesystem for {scheme}:// URLs; install the Airflow provider that registers it, "
            "or write to a local path or file:// URL"
        )
    package, form = _PROVIDERS[scheme]
    return (
        f"{scheme}:// URLs need Airflow's object storage for it: pip install '{package}' wherever tasks run. "
        f"Name the Airflow connection to use in the URL ({form}); without one, the provider's default "
        "credentials apply (for S3, boto3's chain: AWS_* variables, ~/.aws, the instance role)"
    )
