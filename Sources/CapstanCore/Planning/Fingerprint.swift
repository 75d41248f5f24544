import Crypto

/// The identity of one training input at the commit being reconciled.
///
/// `identity` is a typed string so that two kinds of identity can never collide:
/// - `git-blob:<id>` / `git-tree:<id>` — a file or folder inside the repository, by its Git object
///   id (a folder that holds Capstan manifests: `tree-without-manifests:<sha256>`, see
///   docs/fingerprints.md);
/// - `sha256:<hex>` — a file or folder under a data root, by its content;
/// - `version:<text>` — a `uri` input, by the version the spec declares;
/// - `missing` — the input does not exist (loading reports it; the fingerprint still is defined).
public struct InputIdentity: Hashable, Sendable, Codable {
    /// The input as the spec writes it: a repository path, an absolute path or a URI.
    public var input: String
    public var identity: String

    public init(input: String, identity: String) {
        self.input = input
        self.identity = identity
    }

    public static let missing = "missing"
}

/// Everything that determines a training run, in canonical form: what a fingerprint is the
/// SHA-256 of. Stored with each version so a later plan can say *what* changed.
///
/// Deliberately absent: `timeout`, `validate`, `serve`, `aliases`, `retention`, labels and
/// descriptions — changing them never retrains (DESIGN.md §2).
public struct TrainingDescription: Hashable, Sendable, Codable {
    /// Bumped only if the canonical form itself changes (every fingerprint would change with it).
    public static let formatVersion = 1

    public var command: [String]
    public var workdir: String
    public var params: [String: ParamValue]
    /// Names and values.
    public var env: [String: String]
    /// Names only: a secret's value never enters a fingerprint (rotate a token: no retrain).
    public var secretEnv: [String]
    /// In the order the spec lists them.
    public var inputs: [InputIdentity]

    public init(command: [String], workdir: String, params: [String: ParamValue], env: [String: String],
                secretEnv: [String], inputs: [InputIdentity]) {
        self.command = command
        self.workdir = workdir
        self.params = params
        self.env = env
        self.secretEnv = secretEnv.sorted()
        self.inputs = inputs
    }

    /// The description of `spec` with the given input identities (one per `spec.inputs`, in order).
    public init(spec: TrainSpec, inputs: [InputIdentity]) {
        self.init(command: spec.command, workdir: spec.workdir, params: spec.params, env: spec.env,
                  secretEnv: Array(spec.secretEnv.keys), inputs: inputs)
    }
}

extension TrainInput {
    /// How the input is written in the spec (a path or a URI).
    public var written: String {
        switch self {
        case .repository(let p): return p
        case .external(let p): return p
        case .uri(let u, _): return u
        }
    }
}

// MARK: - Fingerprint

/// The fingerprint of a training: 64 lowercase hex digits, the SHA-256 of the description's
/// canonical bytes (below). Same fingerprint ⇒ no retraining (DESIGN.md §2).
///
/// ## Canonical form, version 1
///
/// The bytes are built from two primitives, so that no two different descriptions give the
/// same bytes (every variable-length item says how long it is before it starts):
/// - `u64(n)`: `n` as 8 bytes, big-endian;
/// - `text(s)`: `u64(byte count)` then the UTF-8 bytes of `s` as written (no Unicode
///   normalization).
///
/// The description, in this fixed order:
/// 1. `text("capstan-training")`, `u64(TrainingDescription.formatVersion)`;
/// 2. `text("command")`, `u64(argument count)`, `text(argument)` for each, in order;
/// 3. `text("workdir")`, `text(workdir)`;
/// 4. `text("params")`, a map of `value`s (below);
/// 5. `text("env")`, `u64(count)`, then `text(name)` `text(value)` per variable, sorted by name;
/// 6. `text("secretEnv")`, `u64(count)`, `text(name)` per name, sorted (names only: a value
///    never enters the description);
/// 7. `text("inputs")`, `u64(count)`, then `text(input as written)` `text(identity)` per input,
///    in the order the spec lists them.
///
/// A param `value` is one tag byte and its payload, so `1`, `1.0` and `"1"` all differ:
/// `n` (null); `b` + one byte 0/1; `i` + the Int64 as 8 bytes big-endian two's complement;
/// `d` + the IEEE-754 binary64 bits, 8 bytes big-endian (exact, round-trippable; `-0.0` is written
/// as `0.0` and every NaN as the one quiet NaN `0x7ff8000000000000`, matching `==`);
/// `s` + `text`; `l` + `u64(count)` + each `value`; `m` + a map.
/// A map is `u64(count)` then `text(key)` `value` per entry, keys sorted.
///
/// Everything sorted is sorted by the UTF-8 bytes of the key (byte-wise lexicographic order),
/// which does not depend on locale or on the Swift version.
public enum Fingerprint {
    /// The SHA-256 of `d`'s canonical bytes, as 64 lowercase hex digits.
    public static func of(_ d: TrainingDescription) -> String {
        Hex.string(SHA256.hash(data: canonicalBytes(d)))
    }

    /// The canonical bytes of `d` (see the type's documentation). Exposed for tests and tools.
    public static func canonicalBytes(_ d: TrainingDescription) -> [UInt8] {
        var w = CanonicalWriter()
        w.text("capstan-training")
        w.u64(UInt64(TrainingDescription.formatVersion))
        w.text("command")
        w.u64(UInt64(d.command.count))
        for argument in d.command { w.text(argument) }
        w.text("workdir")
        w.text(d.workdir)
        w.text("params")
        w.map(d.params)
        w.text("env")
        w.u64(UInt64(d.env.count))
        for (name, value) in d.env.sorted(by: { CanonicalWriter.precedes($0.key, $1.key) }) {
            w.text(name)
            w.text(value)
        }
        w.text("secretEnv")
        w.u64(UInt64(d.secretEnv.count))
        for name in d.secretEnv.sorted(by: CanonicalWriter.precedes) { w.text(name) }
        w.text("inputs")
        w.u64(UInt64(d.inputs.count))
        for input in d.inputs {
            w.text(input.input)
            w.text(input.identity)
        }
        return w.bytes
    }
}

/// Appends the primitives of the canonical form.
struct CanonicalWriter {
    var bytes: [UInt8] = []

    init() {
        bytes.reserveCapacity(512)
    }

    /// Byte-wise order of the UTF-8 forms.
    static func precedes(_ a: String, _ b: String) -> Bool {
        a.utf8.lexicographicallyPrecedes(b.utf8)
    }

    mutating func u64(_ n: UInt64) {
        withUnsafeBytes(of: n.bigEndian) { bytes.append(contentsOf: $0) }
    }

    mutating func text(_ s: String) {
        u64(UInt64(s.utf8.count))
        bytes.append(contentsOf: s.utf8)
    }

    mutating func map(_ m: [String: ParamValue]) {
        u64(UInt64(m.count))
        for (key, value) in m.sorted(by: { Self.precedes($0.key, $1.key) }) {
            text(key)
            self.value(value)
        }
    }

    mutating func value(_ v: ParamValue) {
        switch v {
        case .null:
            bytes.append(UInt8(ascii: "n"))
        case .bool(let b):
            bytes.append(UInt8(ascii: "b"))
            bytes.append(b ? 1 : 0)
        case .int(let i):
            bytes.append(UInt8(ascii: "i"))
            u64(UInt64(bitPattern: i))
        case .double(let d):
            bytes.append(UInt8(ascii: "d"))
            // `-0.0 == 0.0` and NaNs differ only in payload: one form each.
            u64(d.isNaN ? 0x7ff8_0000_0000_0000 : (d == 0 ? 0 : d.bitPattern))
        case .string(let s):
            bytes.append(UInt8(ascii: "s"))
            text(s)
        case .list(let items):
            bytes.append(UInt8(ascii: "l"))
            u64(UInt64(items.count))
            for item in items { value(item) }
        case .map(let m):
            bytes.append(UInt8(ascii: "m"))
            map(m)
        }
    }
}

// MARK: - Differences

extension TrainingDescription {
    /// What differs from `old`, the description an earlier version was trained from, in a stable
    /// order: the command, the workdir, params by name, env by name, secret names, then inputs
    /// (matched by how they are written: a changed identity, then removed inputs). Empty when
    /// the two are equal — and also when only the order of the inputs changed, which no
    /// `TrainReason` can express (the fingerprints differ all the same).
    public func differences(from old: TrainingDescription) -> [TrainReason] {
        var out: [TrainReason] = []
        if command != old.command { out.append(.commandChanged(from: old.command, to: command)) }
        if workdir != old.workdir { out.append(.workdirChanged(from: old.workdir, to: workdir)) }
        for name in Set(params.keys).union(old.params.keys).sorted(by: CanonicalWriter.precedes)
        where params[name] != old.params[name] {
            out.append(.paramChanged(name: name, from: old.params[name], to: params[name]))
        }
        for name in Set(env.keys).union(old.env.keys).sorted(by: CanonicalWriter.precedes) where env[name] != old.env[name] {
            out.append(.envChanged(name: name, from: old.env[name], to: env[name]))
        }
        let secrets = Set(secretEnv), oldSecrets = Set(old.secretEnv)
        for name in secrets.union(oldSecrets).sorted(by: CanonicalWriter.precedes) where secrets.contains(name) != oldSecrets.contains(name) {
            out.append(.secretEnvChanged(name: name, added: secrets.contains(name)))
        }
        // Inputs are matched by how they are written; the n-th occurrence of a text with the
        // n-th occurrence in the old list (a spec rarely lists one input twice).
        var oldByInput: [String: [String]] = [:]
        for i in old.inputs { oldByInput[i.input, default: []].append(i.identity) }
        for i in inputs {
            if var olds = oldByInput[i.input], !olds.isEmpty {
                let was = olds.removeFirst()
                oldByInput[i.input] = olds
                if was != i.identity { out.append(.inputChanged(input: i.input, from: was, to: i.identity)) }
            } else {
                out.append(.inputChanged(input: i.input, from: nil, to: i.identity))
            }
        }
        var removed = oldByInput
        for i in old.inputs {
            guard var left = removed[i.input], !left.isEmpty else { continue }
            // Left-overs are the last occurrences; report each once, in the old order.
            let was = left.removeFirst()
            removed[i.input] = left
            out.append(.inputChanged(input: i.input, from: was, to: nil))
        }
        return out
    }
}
