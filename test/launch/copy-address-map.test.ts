import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { isLifeboatError } from "../../src/base/index.js";
import { checkMappingOptions, renameInHosts, replaceAddresses } from "../../src/launch/copy/address-map.js";

void describe("address mapping in a launched copy", () => {
  void it("replaces exact address tokens only: 10.0.0.1 never hits 10.0.0.12", () => {
    const text = [
      "IPADDR=10.0.0.1",
      "GATEWAY=10.0.0.12",
      "address 10.0.0.1/24",
      "other 110.0.0.1 10.0.0.1.5 10.0.0.10",
      "addresses: [10.0.0.1/24, 10.0.0.12/24]",
      "address1=10.0.0.1/24,10.0.0.254",
      "listen 10.0.0.1:8080",
      "end of sentence 10.0.0.1.",
    ].join("\n");
    const r = replaceAddresses(text, [{ from: "10.0.0.1", to: "192.168.50.1" }]);
    assert.equal(
      r.text,
      [
        "IPADDR=192.168.50.1",
        "GATEWAY=10.0.0.12",
        "address 192.168.50.1/24",
        "other 110.0.0.1 10.0.0.1.5 10.0.0.10",
        "addresses: [192.168.50.1/24, 10.0.0.12/24]",
        "address1=192.168.50.1/24,10.0.0.254",
        "listen 192.168.50.1:8080",
        "end of sentence 192.168.50.1.",
      ].join("\n"),
    );
    assert.deepEqual([...r.replaced], [["10.0.0.1 → 192.168.50.1", 6]]);
  });

  void it("applies every mapping at once (a swap does not map twice) and matches IPv6 case-insensitively", () => {
    const r = replaceAddresses("a=10.0.0.1 b=10.0.0.2 c=FE80::1 d=fe80::1:2 e=fe80::10", [
      { from: "10.0.0.1", to: "10.0.0.2" },
      { from: "10.0.0.2", to: "10.0.0.1" },
      { from: "fe80::1", to: "fd00::1" },
    ]);
    assert.equal(r.text, "a=10.0.0.2 b=10.0.0.1 c=fd00::1 d=fe80::1:2 e=fe80::10");
  });

  void it("renames the host in /etc/hosts: names only, short and qualified forms, comments untouched", () => {
    const hosts = [
      "127.0.0.1 localhost",
      "127.0.1.1 sap01.corp.example sap01 # sap01 primary",
      "10.0.0.5 sap01 sap010 db-sap01",
      "10.0.0.6 sap02",
    ].join("\n");
    const r = renameInHosts(hosts, "sap01", "sap01-drill");
    assert.equal(
      r.text,
      [
        "127.0.0.1 localhost",
        "127.0.1.1 sap01-drill.corp.example sap01-drill # sap01 primary",
        "10.0.0.5 sap01-drill sap010 db-sap01",
        "10.0.0.6 sap02",
      ].join("\n"),
    );
    assert.equal(r.count, 3);
  });

  void it("refuses a bad host name, a non-address, a family change and a repeated source", () => {
    const code = (f: () => void) => {
      try {
        f();
      } catch (err) {
        assert.ok(isLifeboatError(err, "LAUNCH_COPY_BAD_OPTION"), String(err));
        return err.message;
      }
      assert.fail("no error");
    };
    code(() => checkMappingOptions("bad name", []));
    code(() => checkMappingOptions(undefined, [{ from: "10.0.0.0/24", to: "10.1.0.0/24" }]));
    code(() => checkMappingOptions(undefined, [{ from: "10.0.0.1", to: "fd00::1" }]));
    code(() =>
      checkMappingOptions(undefined, [
        { from: "10.0.0.1", to: "10.1.0.1" },
        { from: "10.0.0.1", to: "10.2.0.1" },
      ]),
    );
    checkMappingOptions("sap01-drill.corp.example", [{ from: "10.0.0.1", to: "10.1.0.1" }]);
  });
});
