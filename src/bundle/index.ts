/**
 * bundle: the signed agent bundle that source servers install from.
 *
 * Words: the *bundle* is a directory of files (the agent as JavaScript with its
 * worker scripts and native addons, the single executable, install.sh, the CA
 * and release certificates); the *manifest* lists every file with its size and
 * SHA-256 and is signed by the *release key* (D/keys/signing.key, whose
 * certificate D/signing.pem the CA issued). Installers trust nothing but the
 * CA fingerprint they were given: CA → release certificate → manifest → files.
 */
export {
  buildBundle,
  type BuildBundleOptions,
  type BuiltBundle,
  CA_PEM,
  INSTALL_SH,
  RELEASE_PEM,
} from "./build.js";
export { AGENT_JS, WORKER_FILES } from "./esbuild.js";
export {
  buildFailbackImage,
  DEFAULT_IMAGE_MODULES,
  type FailbackImage,
  type FailbackImageOptions,
  IMAGE_AGENT_DIR,
  IMAGE_CONFIG_DIR,
  SERVER_AGENT_DIR,
} from "./failback-image.js";
export {
  MANIFEST,
  MANIFEST_SIG,
  type Manifest,
  type ManifestEntry,
  formatManifest,
  hashFile,
  parseManifest,
  readManifest,
} from "./manifest.js";
export { NATIVE_ADDONS } from "./native.js";
export { publishBundle, type PublishOptions } from "./publish.js";
export { SEA_FILE, SEA_NODE_VERSION, cachedNodeBinary } from "./sea.js";
