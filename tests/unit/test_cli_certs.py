"""``unibus certs init`` through argparse, as ``unibus.cli.main`` wires it."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import pytest
from cryptography import x509

from unibus.cli import certs
from unibus.core.errors import CertificateError, ConfigError
from unibus.stack.certs import CertificateAuthority, CertLayout, write_pem_pair

NODE_ARGS = ["--node", "n1=10.0.0.5,n1.example.org", "--node", "n2=10.0.0.6"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unibus")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    certs.register(verbs)
    return parser


def _run(argv: Sequence[str]) -> int:
    args = _parser().parse_args(argv)
    result: int = args.handler(args)
    return result


def test_certs_and_init_have_help(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["certs", "--help"], ["certs", "init", "--help"]):
        with pytest.raises(SystemExit) as excinfo:
            _parser().parse_args(argv)
        assert excinfo.value.code == 0
    out = capsys.readouterr().out
    assert "init" in out
    for option in ("--out", "--node", "--client-ca-cert", "--client-ca-key", "--force", "--json"):
        assert option in out


def test_init_without_node_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as excinfo:
        _parser().parse_args(["certs", "init"])
    assert excinfo.value.code == 2


def test_certs_without_subverb_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as excinfo:
        _parser().parse_args(["certs"])
    assert excinfo.value.code == 2


def test_json_output_parses_and_lists_every_file_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_dir = tmp_path / "certs"
    assert _run(["certs", "init", "--out", str(out_dir), *NODE_ARGS, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    layout = CertLayout.at(out_dir)
    assert report["files"] == [str(p) for p in layout.files(["n1", "n2"])]
    assert all(Path(p).is_file() for p in report["files"])
    assert report["client_ca"] == {
        "cert": str(layout.client_ca_cert),
        "key": str(layout.client_ca_key),
        "imported_from": None,
    }
    assert report["route_ca"]["cert"] == str(layout.route_ca_cert)
    n1 = report["nodes"]["n1"]
    assert n1["route_cert"] == str(layout.route_cert("n1"))
    assert n1["server_key"] == str(layout.server_key("n1"))
    assert set(n1["server_sans"]) == {
        "IP:10.0.0.5",
        "IP:127.0.0.1",
        "DNS:n1",
        "DNS:n1.example.org",
        "DNS:localhost",
    }
    assert {"IP:10.0.0.6", "IP:127.0.0.1", "DNS:n2", "DNS:localhost"} == set(
        report["nodes"]["n2"]["route_sans"]
    )


def test_human_summary_names_files_and_sans_but_no_key_material(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_dir = tmp_path / "certs"
    assert _run(["certs", "init", "--out", str(out_dir), *NODE_ARGS]) == 0
    out = capsys.readouterr().out
    layout = CertLayout.at(out_dir)
    assert str(layout.client_ca_cert) in out
    assert str(layout.route_cert("n2")) in out
    assert str(layout.server_cert("n1")) in out
    assert "DNS:n1.example.org" in out
    assert "IP:127.0.0.1" in out
    assert "PRIVATE KEY" not in out


def test_default_out_is_certs_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert _run(["certs", "init", *NODE_ARGS, "--json"]) == 0
    capsys.readouterr()
    assert (tmp_path / "certs" / "client-ca.pem").is_file()


def test_existing_material_is_refused_without_force_and_replaced_with_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["certs", "init", "--out", str(tmp_path), *NODE_ARGS, "--json"]
    _run(argv)
    first = (tmp_path / "route-ca.pem").read_bytes()
    with pytest.raises(CertificateError, match="pass --force to replace them"):
        _run(argv)
    assert (tmp_path / "route-ca.pem").read_bytes() == first
    assert _run([*argv, "--force"]) == 0
    assert (tmp_path / "route-ca.pem").read_bytes() != first
    capsys.readouterr()


def test_bad_node_value_is_refused_with_clear_message(tmp_path: Path) -> None:
    with pytest.raises(CertificateError, match=r"node name 'N1' is invalid"):
        _run(["certs", "init", "--out", str(tmp_path / "c"), "--node", "N1=10.0.0.5"])
    with pytest.raises(CertificateError, match=r"'10\.0\.0\.300' is neither"):
        _run(["certs", "init", "--out", str(tmp_path / "c"), "--node", "n1=10.0.0.300"])
    assert not (tmp_path / "c").exists()


def test_duplicate_node_names_are_refused(tmp_path: Path) -> None:
    twice = ["--node", "n1=10.0.0.5", "--node", "n1=10.0.0.6"]
    with pytest.raises(CertificateError, match="given twice"):
        _run(["certs", "init", "--out", str(tmp_path / "c"), *twice])


def test_client_ca_cert_without_key_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="go together"):
        _run(["certs", "init", "--out", str(tmp_path), *NODE_ARGS, "--client-ca-cert", "x.pem"])
    with pytest.raises(ConfigError, match="go together"):
        _run(["certs", "init", "--out", str(tmp_path), *NODE_ARGS, "--client-ca-key", "x.pem"])


def test_import_keeps_the_existing_client_ca(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ca = CertificateAuthority.create("existing")
    cert_file, key_file = tmp_path / "old-ca.pem", tmp_path / "old-ca-key.pem"
    write_pem_pair(ca.cert, ca.key, cert_file, key_file)
    out_dir = tmp_path / "certs"
    argv = ["certs", "init", "--out", str(out_dir), *NODE_ARGS, "--json"]
    argv += ["--client-ca-cert", str(cert_file), "--client-ca-key", str(key_file)]
    assert _run(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["client_ca"]["imported_from"] == str(cert_file)
    layout = CertLayout.at(out_dir)
    assert x509.load_pem_x509_certificate(layout.client_ca_cert.read_bytes()) == ca.cert
    server = x509.load_pem_x509_certificate(layout.server_cert("n1").read_bytes())
    server.verify_directly_issued_by(ca.cert)


def test_main_reports_errors_as_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # main.py also imports the keys and stack verb modules, written separately.
    pytest.importorskip("unibus.cli.keys")
    pytest.importorskip("unibus.cli.stack")
    from unibus.cli.main import main

    assert main(["certs", "init", "--out", str(tmp_path), "--node", "n1=nope"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("unibus certs: error: node n1:")
    assert err.count("\n") == 1
