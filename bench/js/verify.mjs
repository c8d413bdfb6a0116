#!/usr/bin/env node
// Minimal offline Sigstore bundle verifier built on @sigstore/verify, used as
// the sigstore-js peer of the kcache benchmark. It takes the same arguments
// as `kcache sigstore verify-bundle`:
//
//   node bench/js/verify.mjs --bundle FILE
//       (--certificate-identity ID --certificate-oidc-issuer URL | --key FILE)
//       --trusted-root FILE  FILE_OR_sha256:HEX
//
// Exit 0 = verified, 1 = verification failed, 2 = usage error.
//
// @sigstore/verify checks the signature, the chain to a trusted CA, SCTs,
// tlog entries (inclusion proof / SET / checkpoint) and timestamps, but it
// leaves binding the artifact to the bundle to its caller (the `sigstore`
// package does that). We do it here the same way, so the peer does the same
// job as kcache: message signatures are checked against the artifact bytes
// and their digest against messageDigest; DSSE in-toto statements must name
// the artifact's sha256 as a subject.
import { createHash, createPublicKey } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { bundleFromJSON } from '@sigstore/bundle';
import { TrustedRoot } from '@sigstore/protobuf-specs';
import { Verifier, toSignedEntity, toTrustMaterial } from '@sigstore/verify';

function usage(msg) {
  process.stderr.write(`verify.mjs: ${msg}\n`);
  process.exit(2);
}

function parseArgs(argv) {
  const opts = { positional: [] };
  const flags = {
    '--bundle': 'bundle',
    '--certificate-identity': 'identity',
    '--certificate-oidc-issuer': 'issuer',
    '--key': 'key',
    '--trusted-root': 'trustedRoot',
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a in flags) {
      if (i + 1 >= argv.length) usage(`${a} needs a value`);
      opts[flags[a]] = argv[++i];
    } else if (a.startsWith('--')) {
      usage(`unknown flag ${a}`);
    } else {
      opts.positional.push(a);
    }
  }
  if (!opts.bundle) usage('--bundle is required');
  if (!opts.trustedRoot) usage('--trusted-root is required (this harness is offline only)');
  if (opts.positional.length !== 1) usage('exactly one FILE_OR_sha256:HEX is required');
  if (!opts.key && !(opts.identity && opts.issuer)) {
    usage('either --key or --certificate-identity + --certificate-oidc-issuer is required');
  }
  return opts;
}

function main() {
  const opts = parseArgs(process.argv.slice(2));
  const input = opts.positional[0];

  let artifact;
  let artifactDigest;
  if (input.startsWith('sha256:')) {
    artifactDigest = Buffer.from(input.slice('sha256:'.length), 'hex');
    if (artifactDigest.length !== 32) usage('bad sha256 digest');
  } else {
    artifact = readFileSync(input);
    artifactDigest = createHash('sha256').update(artifact).digest();
  }

  const bundle = bundleFromJSON(JSON.parse(readFileSync(opts.bundle, 'utf8')));
  const root = TrustedRoot.fromJSON(JSON.parse(readFileSync(opts.trustedRoot, 'utf8')));

  let keys;
  if (opts.key) {
    const publicKey = createPublicKey(readFileSync(opts.key));
    // The bundle's key hint is informational; the caller's key is the trust anchor.
    keys = () => ({ publicKey, validFor: () => true });
  }
  const trust = toTrustMaterial(root, keys);

  // Bind artifact <-> bundle content.
  const content = bundle.content;
  if (content.$case === 'messageSignature') {
    const md = content.messageSignature.messageDigest;
    if (md && !artifactDigest.equals(Buffer.from(md.digest))) {
      throw new Error('artifact digest does not match the bundle messageDigest');
    }
    if (!artifact) {
      // node:crypto cannot verify a pre-hashed ECDSA message signature.
      usage('message-signature bundles need the artifact file, not a digest');
    }
  } else if (content.$case === 'dsseEnvelope') {
    const env = content.dsseEnvelope;
    if (env.payloadType !== 'application/vnd.in-toto+json') {
      throw new Error(`unsupported DSSE payload type ${env.payloadType}`);
    }
    const stmt = JSON.parse(Buffer.from(env.payload).toString('utf8'));
    const want = artifactDigest.toString('hex');
    const ok = (stmt.subject || []).some((s) => s.digest && s.digest.sha256 === want);
    if (!ok) throw new Error('artifact sha256 is not a subject of the in-toto statement');
  }

  const entity = toSignedEntity(bundle, artifact);
  const verifier = new Verifier(trust, opts.key ? { ctlogThreshold: 0 } : {});
  const policy = opts.key
    ? undefined
    : { subjectAlternativeName: opts.identity, extensions: { issuer: opts.issuer } };
  verifier.verify(entity, policy);
}

try {
  main();
  process.exit(0);
} catch (e) {
  process.stderr.write(`verification failed: ${e && e.message ? e.message : e}\n`);
  process.exit(1);
}
