import assert from "node:assert/strict";
import { X509Certificate, createPrivateKey, webcrypto } from "node:crypto";
import { describe, it, before } from "node:test";
import "reflect-metadata";
import * as x509 from "@peculiar/x509";
import { ManualClock } from "../../src/base/index.js";
import {
  type CaCredentials,
  certFingerprint,
  clientIdentity,
  createCa,
  generateKeyAndCsr,
  issueClientCert,
  issueServerCert,
  issueSigningCert,
  publicKeyFingerprintOfCsr,
  sameFingerprint,
} from "../../src/net/index.js";

const CLIENT_AUTH = "1.3.6.1.5.5.7.3.2";
const SERVER_AUTH = "1.3.6.1.5.5.7.3.1";

/** Flips one bit of the DER inside a PEM, `fromEnd` bytes before its end. */
function flipDerByte(pem: string, fromEnd: number): string {
  const b64 = pem.replace(/-----[^-]+-----/g, "").replace(/\s/g, "");
  const der = Buffer.from(b64, "base64");
  der[der.length - fromEnd] = der[der.length - fromEnd]! ^ 0x01;
  const label = /-----BEGIN ([^-]+)-----/.exec(pem)![1]!;
  const body = der
    .toString("base64")
    .match(/.{1,64}/g)!
    .join("\n");
  return `-----BEGIN ${label}-----\n${body}\n-----END ${label}-----\n`;
}

void describe("certificates", () => {
  let ca: CaCredentials;
  before(async () => {
    ca = await createCa({ commonName: "Lifeboat CA unit" });
  });

  void it("makes a P-256 self-signed CA, pathLen 0, for certificate and CRL signing, ten years", () => {
    const cert = new X509Certificate(ca.certPem);
    assert.equal(cert.ca, true);
    assert.equal(cert.subject, "CN=Lifeboat CA unit");
    assert.equal(cert.issuer, cert.subject);
    assert.ok(cert.verify(cert.publicKey));
    assert.equal(cert.publicKey.asymmetricKeyDetails?.namedCurve, "prime256v1");
    assert.equal(createPrivateKey(ca.keyPem).asymmetricKeyType, "ec");
    assert.match(ca.keyPem, /^-----BEGIN PRIVATE KEY-----\n/);
    const parsed = new x509.X509Certificate(ca.certPem);
    const bc = parsed.getExtension(x509.BasicConstraintsExtension)!;
    assert.deepEqual([bc.ca, bc.pathLength, bc.critical], [true, 0, true]);
    const ku = parsed.getExtension(x509.KeyUsagesExtension)!;
    assert.equal(ku.usages, x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign);
    const years = (parsed.notAfter.getTime() - parsed.notBefore.getTime()) / (365.25 * 86_400_000);
    assert.ok(years > 9.9 && years < 10.1, `validity ${years} years`);
  });

  void it("gives each default CA name a distinct suffix and honours the clock", async () => {
    const clock = new ManualClock(Date.UTC(2030, 0, 1));
    const a = new X509Certificate((await createCa({ clock })).certPem);
    const b = new X509Certificate((await createCa()).certPem);
    assert.match(a.subject, /^CN=Lifeboat CA [0-9a-f]{6}$/);
    assert.notEqual(a.subject, b.subject);
    assert.ok(new Date(a.validFrom).getTime() <= Date.UTC(2030, 0, 1));
    assert.ok(new Date(a.validFrom).getTime() > Date.UTC(2029, 11, 31));
  });

  void it("puts IP addresses into IP SANs and names into DNS SANs, as given", async () => {
    const s = await issueServerCert(ca, {
      hostnames: ["Lifeboat.Example.NET", "10.1.2.3", "fd00::5", "::ffff:192.168.1.9", "[::1]", "dr-site"],
      validityDays: 30,
    });
    const cert = new X509Certificate(s.certPem);
    assert.equal(
      cert.subjectAltName,
      "DNS:lifeboat.example.net, IP Address:10.1.2.3, IP Address:FD00:0:0:0:0:0:0:5, " +
        "IP Address:0:0:0:0:0:FFFF:C0A8:109, IP Address:0:0:0:0:0:0:0:1, DNS:dr-site",
    );
    assert.equal(cert.checkIP("10.1.2.3"), "10.1.2.3");
    assert.equal(cert.checkIP("::ffff:192.168.1.9"), "::ffff:192.168.1.9");
    assert.equal(cert.checkHost("lifeboat.example.net"), "lifeboat.example.net");
    assert.equal(cert.checkHost("10.1.2.3"), undefined, "an address is no DNS name");
    assert.ok(cert.checkIssued(new X509Certificate(ca.certPem)));
    assert.ok(cert.verify(new X509Certificate(ca.certPem).publicKey));
    const eku = new x509.X509Certificate(s.certPem).getExtension(x509.ExtendedKeyUsageExtension)!;
    assert.deepEqual([...eku.usages], [SERVER_AUTH]);
    assert.equal(s.serial, cert.serialNumber.toLowerCase());
    assert.match(s.serial, /^[0-9a-f]{32}$/);
    assert.equal(s.notAfter.toISOString(), new Date(cert.validTo).toISOString());
    assert.equal(createPrivateKey(s.keyPem).asymmetricKeyDetails?.namedCurve, "prime256v1");
  });

  void it("refuses host names that are neither names nor addresses", async () => {
    for (const bad of ["", "a b", "fe80::1%eth0", "-x.example", "x..example"]) {
      await assert.rejects(
        issueServerCert(ca, { hostnames: [bad] }),
        { code: "NET_CERT_PARAMS_INVALID" },
        bad,
      );
    }
    await assert.rejects(issueServerCert(ca, { hostnames: [] }), { code: "NET_CERT_PARAMS_INVALID" });
  });

  void it("issues a client certificate carrying the identity, for the CSR's key", async () => {
    const { keyPem, csrPem } = await generateKeyAndCsr({ commonName: "db1.example.net" });
    assert.match(keyPem, /^-----BEGIN PRIVATE KEY-----\n/);
    assert.match(csrPem, /^-----BEGIN CERTIFICATE REQUEST-----\n/);
    const clock = new ManualClock(Date.UTC(2031, 5, 1, 12));
    const c = await issueClientCert(ca, csrPem, { role: "agent", subjectId: "srv-42", clock });
    const cert = new X509Certificate(c.certPem);
    assert.equal(cert.subject, "CN=agent:srv-42");
    assert.equal(cert.subjectAltName, "URI:urn:lifeboat:agent:srv-42");
    assert.ok(cert.verify(new X509Certificate(ca.certPem).publicKey));
    assert.equal(cert.ca, false);
    const eku = new x509.X509Certificate(c.certPem).getExtension(x509.ExtendedKeyUsageExtension)!;
    assert.deepEqual([...eku.usages], [CLIENT_AUTH]);
    assert.match(c.serial, /^[0-9a-f]{32}$/);
    assert.equal(c.serial, cert.serialNumber.toLowerCase());
    assert.equal(
      c.notAfter.getTime() - Date.UTC(2031, 5, 1, 12),
      7 * 24 * 3_600_000,
      "default validity a week",
    );
    assert.ok(c.notBefore.getTime() <= clock.now());
    assert.ok(cert.checkPrivateKey(createPrivateKey(keyPem)), "the certificate certifies the agent's key");
    assert.equal(c.publicKeyFingerprint, publicKeyFingerprintOfCsr(csrPem));
    assert.match(c.publicKeyFingerprint, /^[0-9a-f]{64}$/);
    assert.deepEqual(clientIdentity(c.certPem), {
      role: "agent",
      subjectId: "srv-42",
      serial: c.serial,
      notBefore: c.notBefore,
      notAfter: c.notAfter,
    });
  });

  void it("gives every certificate a new random serial and the same key the same fingerprint", async () => {
    const { csrPem } = await generateKeyAndCsr({ commonName: "x" });
    const a = await issueClientCert(ca, csrPem, { role: "replicator", subjectId: "r1", validityHours: 1 });
    const b = await issueClientCert(ca, csrPem, { role: "replicator", subjectId: "r1", validityHours: 1 });
    assert.notEqual(a.serial, b.serial);
    assert.equal(a.publicKeyFingerprint, b.publicKeyFingerprint);
    const other = await generateKeyAndCsr({ commonName: "x" });
    assert.notEqual(publicKeyFingerprintOfCsr(other.csrPem), a.publicKeyFingerprint);
  });

  void it("refuses a CSR whose signature is broken, and one that is not a CSR", async () => {
    const { csrPem } = await generateKeyAndCsr({ commonName: "agent-1" });
    const opts = { role: "agent", subjectId: "s1" } as const;
    // The last byte belongs to the signature; an altered subject breaks it as well.
    await assert.rejects(issueClientCert(ca, flipDerByte(csrPem, 1), opts), { code: "NET_CSR_INVALID" });
    const renamed = csrPem.replace(/[\s\S]*/, (p) => {
      const der = Buffer.from(p.replace(/-----[^-]+-----/g, "").replace(/\s/g, ""), "base64");
      const at = der.indexOf(Buffer.from("agent-1"));
      der[at + 6] = "2".charCodeAt(0);
      return `-----BEGIN CERTIFICATE REQUEST-----\n${der.toString("base64")}\n-----END CERTIFICATE REQUEST-----\n`;
    });
    await assert.rejects(issueClientCert(ca, renamed, opts), { code: "NET_CSR_INVALID" });
    await assert.rejects(issueClientCert(ca, "hello", opts), { code: "NET_CSR_INVALID" });
    await assert.rejects(issueClientCert(ca, ca.certPem, opts), { code: "NET_CSR_INVALID" });
    assert.throws(
      () =>
        publicKeyFingerprintOfCsr(
          "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----",
        ),
      {
        code: "NET_CSR_INVALID",
      },
    );
  });

  void it("refuses a CSR for a key that is not P-256", async () => {
    const alg = {
      name: "RSASSA-PKCS1-v1_5",
      hash: "SHA-256",
      publicExponent: new Uint8Array([1, 0, 1]),
      modulusLength: 2048,
    };
    const keys = await webcrypto.subtle.generateKey(alg, true, ["sign", "verify"]);
    const csr = await x509.Pkcs10CertificateRequestGenerator.create({
      name: "CN=rsa",
      keys,
      signingAlgorithm: alg,
    });
    await assert.rejects(issueClientCert(ca, csr.toString("pem"), { role: "agent", subjectId: "s1" }), {
      code: "NET_CSR_INVALID",
      message: /not ECDSA P-256/,
    });
  });

  void it("refuses subject ids and roles that cannot go into a certificate", async () => {
    const { csrPem } = await generateKeyAndCsr({ commonName: "x" });
    for (const subjectId of ["", "a:b", "a b", "x".repeat(129), "../x"]) {
      await assert.rejects(issueClientCert(ca, csrPem, { role: "agent", subjectId }), {
        code: "NET_CERT_PARAMS_INVALID",
      });
    }
    await assert.rejects(issueClientCert(ca, csrPem, { role: "admin" as "agent", subjectId: "a" }), {
      code: "NET_CERT_PARAMS_INVALID",
    });
  });

  void it("finds no client identity in other certificates", async () => {
    const server = await issueServerCert(ca, { hostnames: ["localhost"] });
    const signing = await issueSigningCert(ca);
    assert.equal(clientIdentity(server.certPem), undefined);
    assert.equal(clientIdentity(signing.certPem), undefined);
    assert.equal(clientIdentity(ca.certPem), undefined);
    assert.equal(clientIdentity({} as never), undefined);
    assert.equal(clientIdentity("not a certificate"), undefined);
    assert.equal(clientIdentity(undefined), undefined);
  });

  void it("refuses to issue with something that is not a CA", async () => {
    const server = await issueServerCert(ca, { hostnames: ["localhost"] });
    await assert.rejects(
      issueServerCert({ certPem: server.certPem, keyPem: server.keyPem }, { hostnames: ["x"] }),
      {
        code: "NET_CA_INVALID",
      },
    );
    await assert.rejects(issueServerCert({ certPem: ca.certPem, keyPem: "nonsense" }, { hostnames: ["x"] }), {
      code: "NET_CA_INVALID",
    });
  });

  void it("never lets a leaf outlive its CA", async () => {
    const clock = new ManualClock(Date.now());
    const young = await createCa({ clock });
    clock.advance(3649 * 86_400_000);
    const s = await issueServerCert(young, { hostnames: ["x"], clock });
    assert.equal(s.notAfter.getTime(), new x509.X509Certificate(young.certPem).notAfter.getTime());
  });
});

void describe("fingerprints", () => {
  void it("prints the certificate fingerprint as openssl does", async () => {
    const { certPem } = await createCa();
    const fp = certFingerprint(certPem);
    assert.match(fp, /^([0-9A-F]{2}:){31}[0-9A-F]{2}$/);
    // Node prints fingerprint256 the way `openssl x509 -fingerprint -sha256` does.
    assert.equal(fp, new X509Certificate(certPem).fingerprint256);
  });

  void it("compares fingerprints ignoring colons and case, and nothing else", () => {
    const fp = "AB:".repeat(31) + "CD";
    assert.ok(sameFingerprint(fp, fp.replace(/:/g, "").toLowerCase()));
    assert.ok(sameFingerprint(` ${fp.toLowerCase()} `, fp));
    assert.ok(!sameFingerprint(fp, "AB:".repeat(31) + "CE"));
    assert.ok(!sameFingerprint("", ""));
    assert.ok(!sameFingerprint("abcd", "ABCD"), "a short string is no SHA-256 fingerprint");
  });

  void it("refuses something that is not a certificate", () => {
    assert.throws(() => certFingerprint("nope"), { code: "NET_CERT_INVALID" });
  });
});
