import assert from "node:assert/strict";
import { before, describe, it } from "node:test";
import { ManualClock } from "../../src/base/index.js";
import {
  type CaCredentials,
  createCa,
  generateKeyAndCsr,
  issueClientCert,
  issueServerCert,
  issueSigningCert,
  signDetached,
  verifyDetached,
} from "../../src/net/index.js";

void describe("release signing", () => {
  let ca: CaCredentials;
  let signer: { certPem: string; keyPem: string };
  const bundle = Buffer.from("#!/bin/sh\necho lifeboat agent bundle\n".repeat(1000));

  before(async () => {
    ca = await createCa();
    signer = await issueSigningCert(ca);
  });

  void it("verifies what it signed", () => {
    const sig = signDetached(signer.keyPem, bundle);
    assert.match(sig, /^[A-Za-z0-9+/]+=*$/);
    assert.equal(verifyDetached(signer.certPem, ca.certPem, bundle, sig), true);
    assert.equal(
      verifyDetached(signer.certPem, ca.certPem, "text", signDetached(signer.keyPem, "text")),
      true,
    );
  });

  void it("detects a changed byte in the data or the signature", () => {
    const sig = signDetached(signer.keyPem, bundle);
    const tampered = Buffer.from(bundle);
    tampered[1234] = tampered[1234]! ^ 0x20;
    assert.equal(verifyDetached(signer.certPem, ca.certPem, tampered, sig), false);
    const raw = Buffer.from(sig, "base64");
    raw[raw.length - 1] = raw[raw.length - 1]! ^ 0x01;
    assert.equal(verifyDetached(signer.certPem, ca.certPem, bundle, raw.toString("base64")), false);
    assert.equal(verifyDetached(signer.certPem, ca.certPem, bundle, ""), false);
    assert.equal(verifyDetached(signer.certPem, ca.certPem, bundle, "not base64 at all!"), false);
  });

  void it("refuses a signing certificate from another CA", async () => {
    const other = await createCa();
    const foreign = await issueSigningCert(other);
    const sig = signDetached(foreign.keyPem, bundle);
    assert.equal(verifyDetached(foreign.certPem, other.certPem, bundle, sig), true);
    assert.equal(verifyDetached(foreign.certPem, ca.certPem, bundle, sig), false);
  });

  void it("refuses a signature by a key whose certificate is not for code signing", async () => {
    const server = await issueServerCert(ca, { hostnames: ["localhost"] });
    assert.equal(
      verifyDetached(server.certPem, ca.certPem, bundle, signDetached(server.keyPem, bundle)),
      false,
    );
    const { keyPem, csrPem } = await generateKeyAndCsr({ commonName: "a" });
    const client = await issueClientCert(ca, csrPem, { role: "agent", subjectId: "a" });
    assert.equal(verifyDetached(client.certPem, ca.certPem, bundle, signDetached(keyPem, bundle)), false);
    // The CA signing directly is not a release signature either.
    assert.equal(verifyDetached(ca.certPem, ca.certPem, bundle, signDetached(ca.keyPem, bundle)), false);
  });

  void it("refuses a signing certificate outside its validity", () => {
    const sig = signDetached(signer.keyPem, bundle);
    const later = new ManualClock(Date.now() + 6 * 365 * 86_400_000);
    assert.equal(verifyDetached(signer.certPem, ca.certPem, bundle, sig, { clock: later }), false);
  });

  void it("answers false, not an exception, for unreadable certificates", () => {
    const sig = signDetached(signer.keyPem, bundle);
    assert.equal(verifyDetached("garbage", ca.certPem, bundle, sig), false);
    assert.equal(verifyDetached(signer.certPem, "garbage", bundle, sig), false);
  });
});
