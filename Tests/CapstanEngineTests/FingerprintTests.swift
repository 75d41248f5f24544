import CapstanCore
import Foundation
import Testing

/// The canonical form of a training description and what changes its fingerprint.
struct FingerprintTests {
    static let base = TrainingDescription(
        command: ["python3", "train.py"], workdir: "models/churn",
        params: [
            "learning_rate": .double(0.1), "epochs": .int(10), "early_stop": .bool(true), "seed": .null,
            "layers": .list([.int(64), .int(32)]), "optimizer": .map(["name": .string("adam"), "beta": .double(0.9)]),
        ],
        env: ["PYTHONHASHSEED": "0", "MODE": "full"], secretEnv: ["API_TOKEN", "DB_PASSWORD"],
        inputs: [InputIdentity(input: "models/churn", identity: "tree-without-manifests:" + String(repeating: "a", count: 64)),
                 InputIdentity(input: "data/churn.csv", identity: "git-blob:" + String(repeating: "b", count: 40)),
                 InputIdentity(input: "s3://bucket/events/", identity: "version:2026-11-01")])

    static func with(_ change: (inout TrainingDescription) -> Void) -> TrainingDescription {
        var d = base
        change(&d)
        return d
    }

    @Test func theSameDescriptionGivesTheSameFingerprint() {
        // Built again, with every map filled in another order.
        var params: [String: ParamValue] = [:]
        for key in Self.base.params.keys.sorted().reversed() { params[key] = Self.base.params[key] }
        let again = TrainingDescription(command: ["python3", "train.py"], workdir: "models/churn", params: params,
                                        env: ["MODE": "full", "PYTHONHASHSEED": "0"], secretEnv: ["DB_PASSWORD", "API_TOKEN"],
                                        inputs: Self.base.inputs)
        #expect(again == Self.base)
        let fingerprint = Fingerprint.of(Self.base)
        #expect(Fingerprint.of(again) == fingerprint)
        #expect(Fingerprint.of(Self.base) == fingerprint)
        #expect(fingerprint.utf8.count == 64)
        #expect(fingerprint.allSatisfy { "0123456789abcdef".contains($0) })
    }

    /// One field changed at a time, each must give its own fingerprint.
    static let singleChanges: [(String, TrainingDescription)] = [
        ("param value", with { $0.params["learning_rate"] = .double(0.05) }),
        ("int param value", with { $0.params["epochs"] = .int(11) }),
        ("int 10 → double 10.0", with { $0.params["epochs"] = .double(10) }),
        ("int 10 → string \"10\"", with { $0.params["epochs"] = .string("10") }),
        ("bool → string", with { $0.params["early_stop"] = .string("true") }),
        ("null → string", with { $0.params["seed"] = .string("null") }),
        ("null → missing", with { $0.params["seed"] = nil }),
        ("list order", with { $0.params["layers"] = .list([.int(32), .int(64)]) }),
        ("list → map", with { $0.params["layers"] = .map(["64": .int(32)]) }),
        ("nested map value", with { $0.params["optimizer"] = .map(["name": .string("adam"), "beta": .double(0.99)]) }),
        ("nested map key", with { $0.params["optimizer"] = .map(["name": .string("adam"), "beta2": .double(0.9)]) }),
        ("param added", with { $0.params["dropout"] = .double(0.2) }),
        ("param removed", with { $0.params["learning_rate"] = nil }),
        ("param renamed", with { $0.params["lr"] = $0.params.removeValue(forKey: "learning_rate") }),
        ("env value", with { $0.env["MODE"] = "fast" }),
        ("env added", with { $0.env["OMP_NUM_THREADS"] = "4" }),
        ("env removed", with { $0.env["MODE"] = nil }),
        ("secret name renamed", with { $0.secretEnv = ["API_KEY", "DB_PASSWORD"] }),
        ("secret name added", with { $0.secretEnv = ["API_TOKEN", "DB_PASSWORD", "HF_TOKEN"] }),
        ("secret name removed", with { $0.secretEnv = ["API_TOKEN"] }),
        ("command argument", with { $0.command = ["python3", "train2.py"] }),
        ("command argument added", with { $0.command = ["python3", "train.py", "--fast"] }),
        ("command joined", with { $0.command = ["python3 train.py"] }),
        ("workdir", with { $0.workdir = "models/churn2" }),
        ("input identity", with { $0.inputs[1].identity = "git-blob:" + String(repeating: "c", count: 40) }),
        ("uri version", with { $0.inputs[2].identity = "version:2026-11-02" }),
        ("input missing", with { $0.inputs[1].identity = InputIdentity.missing }),
        ("input order", with { $0.inputs.swapAt(0, 1) }),
        ("input renamed", with { $0.inputs[1].input = "data/churn2.csv" }),
        ("input added", with { $0.inputs.append(InputIdentity(input: "data/extra.csv", identity: "missing")) }),
        ("input removed", with { $0.inputs.removeLast() }),
    ]

    @Test(arguments: singleChanges.indices)
    func everySingleChangeGivesANewFingerprint(_ i: Int) {
        let (what, changed) = Self.singleChanges[i]
        #expect(changed != Self.base, "\(what)")
        #expect(Fingerprint.of(changed) != Fingerprint.of(Self.base), "\(what)")
    }

    @Test func allTheChangedDescriptionsDifferFromEachOther() {
        let fingerprints = Self.singleChanges.map { Fingerprint.of($0.1) } + [Fingerprint.of(Self.base)]
        #expect(Set(fingerprints).count == fingerprints.count)
    }

    /// Boundaries between strings are encoded, so moving a character across one changes the bytes.
    @Test func stringBoundariesAreUnambiguous() {
        func d(command: [String] = ["a"], workdir: String = ".", params: [String: ParamValue] = [:], env: [String: String] = [:],
               secrets: [String] = [], inputs: [InputIdentity] = []) -> String {
            Fingerprint.of(TrainingDescription(command: command, workdir: workdir, params: params, env: env, secretEnv: secrets,
                                               inputs: inputs))
        }
        let prints = [
            d(command: ["a", "b"]), d(command: ["ab"]), d(command: ["a b"]), d(command: ["a", "", "b"]), d(command: ["a\u{0}b"]),
            d(env: ["a": "b=c"]), d(env: ["a=b": "c"]), d(env: ["a": "bc"]), d(env: ["ab": "c"]),
            d(params: ["a": .string("bc")]), d(params: ["ab": .string("c")]), d(params: ["a": .list([.string("b"), .string("c")])]),
            d(params: ["a": .list([.string("bc")])]), d(params: ["a": .map(["b": .string("c")])]),
            d(secrets: ["AB"]), d(secrets: ["A", "B"]),
            d(inputs: [InputIdentity(input: "a", identity: "bc")]), d(inputs: [InputIdentity(input: "ab", identity: "c")]),
            d(workdir: "a"), d(command: ["a", "."]),
        ]
        #expect(Set(prints).count == prints.count)
    }

    /// `-0.0 == 0.0`, so they are one value; every other double keeps its exact bits.
    @Test func doublesAreExactAndAgreeWithEquality() {
        func fp(_ v: Double) -> String {
            Fingerprint.of(Self.with { $0.params["learning_rate"] = .double(v) })
        }
        #expect(fp(-0.0) == fp(0.0))
        #expect(fp(0.1) != fp(0.1.nextUp))
        #expect(fp(1e-300) != fp(1e-301))
        #expect(fp(.infinity) != fp(-.infinity))
        #expect(fp(.nan) == fp(-.nan))
    }

    /// The documented byte form, written out by hand for a small description: a change of the
    /// canonical form must be deliberate (and bump `formatVersion`).
    @Test func theCanonicalBytesAreTheDocumentedOnes() {
        let d = TrainingDescription(command: ["py"], workdir: ".", params: ["b": .int(-1), "a": .double(1)],
                                    env: ["E": "v"], secretEnv: ["S"], inputs: [InputIdentity(input: "d", identity: "missing")])
        func u64(_ n: UInt64) -> [UInt8] { (0..<8).map { UInt8(truncatingIfNeeded: n >> (56 - 8 * UInt64($0))) } }
        func text(_ s: String) -> [UInt8] { u64(UInt64(s.utf8.count)) + Array(s.utf8) }
        var expected: [UInt8] = text("capstan-training") + u64(1)
        expected += text("command") + u64(1) + text("py")
        expected += text("workdir") + text(".")
        expected += text("params") + u64(2)
        expected += text("a") + [UInt8(ascii: "d")] + u64(0x3ff0_0000_0000_0000)
        expected += text("b") + [UInt8(ascii: "i")] + u64(UInt64.max)
        expected += text("env") + u64(1) + text("E") + text("v")
        expected += text("secretEnv") + u64(1) + text("S")
        expected += text("inputs") + u64(1) + text("d") + text("missing")
        #expect(Fingerprint.canonicalBytes(d) == expected)
        #expect(Fingerprint.of(d) == Hex.sha256(expected))
        #expect(TrainingDescription.formatVersion == 1)
    }

    // MARK: What is not in a fingerprint

    static let spec = TrainSpec(command: ["python3", "train.py"], workdir: "models/churn", inputs: [.repository("models/churn")],
                                params: ["lr": .double(0.1)], env: ["MODE": "full"],
                                secretEnv: ["API_TOKEN": "CAPSTAN_SECRET_API_TOKEN"],
                                timeout: ManifestDuration(milliseconds: 1_800_000, text: "30m"))
    static let inputs = [InputIdentity(input: "models/churn", identity: "git-tree:" + String(repeating: "d", count: 40))]

    @Test func aSecretsValueAndSourceNeverEnterTheDescription() throws {
        let secretValue = "s3cr3t-value-0123456789"
        var other = Self.spec
        other.secretEnv = ["API_TOKEN": "SOME_OTHER_VARIABLE"]
        let a = TrainingDescription(spec: Self.spec, inputs: Self.inputs)
        let b = TrainingDescription(spec: other, inputs: Self.inputs)
        #expect(a.secretEnv == ["API_TOKEN"])
        #expect(a == b)
        #expect(Fingerprint.of(a) == Fingerprint.of(b))
        // Neither the value (which the description has no way to hold) nor the source variable
        // appears in the canonical bytes or in the stored (JSON) form.
        let bytes = String(decoding: Fingerprint.canonicalBytes(a), as: UTF8.self)
        let json = String(decoding: try JSONEncoder().encode(a), as: UTF8.self)
        for text in [bytes, json] {
            #expect(text.contains("API_TOKEN"))
            #expect(!text.contains("CAPSTAN_SECRET_API_TOKEN"))
            #expect(!text.contains(secretValue))
        }
    }

    @Test func theTimeoutIsNotInTheFingerprint() {
        var longer = Self.spec
        longer.timeout = ManifestDuration(milliseconds: 7_200_000, text: "2h")
        #expect(Fingerprint.of(TrainingDescription(spec: longer, inputs: Self.inputs))
                == Fingerprint.of(TrainingDescription(spec: Self.spec, inputs: Self.inputs)))
    }

    // MARK: Differences

    @Test func equalDescriptionsHaveNoDifferences() {
        #expect(Self.base.differences(from: Self.base).isEmpty)
    }

    @Test func differencesListExactlyWhatChangedInAStableOrder() {
        let old = Self.base
        let new = Self.with {
            $0.command = ["python3", "train.py", "--fast"]
            $0.workdir = "models/churn2"
            $0.params["learning_rate"] = .double(0.05)
            $0.params["epochs"] = .double(10) // int → double
            $0.params["seed"] = nil
            $0.params["dropout"] = .double(0.2)
            $0.env["MODE"] = "fast"
            $0.env["PYTHONHASHSEED"] = nil
            $0.env["OMP_NUM_THREADS"] = "4"
            $0.secretEnv = ["API_TOKEN", "HF_TOKEN"]
            $0.inputs = [
                InputIdentity(input: "data/extra.csv", identity: "missing"),
                InputIdentity(input: "models/churn", identity: "tree-without-manifests:" + String(repeating: "e", count: 64)),
                InputIdentity(input: "s3://bucket/events/", identity: "version:2026-11-01"),
            ]
        }
        let expected: [TrainReason] = [
            .commandChanged(from: ["python3", "train.py"], to: ["python3", "train.py", "--fast"]),
            .workdirChanged(from: "models/churn", to: "models/churn2"),
            .paramChanged(name: "dropout", from: nil, to: .double(0.2)),
            .paramChanged(name: "epochs", from: .int(10), to: .double(10)),
            .paramChanged(name: "learning_rate", from: .double(0.1), to: .double(0.05)),
            .paramChanged(name: "seed", from: .null, to: nil),
            .envChanged(name: "MODE", from: "full", to: "fast"),
            .envChanged(name: "OMP_NUM_THREADS", from: nil, to: "4"),
            .envChanged(name: "PYTHONHASHSEED", from: "0", to: nil),
            .secretEnvChanged(name: "DB_PASSWORD", added: false),
            .secretEnvChanged(name: "HF_TOKEN", added: true),
            .inputChanged(input: "data/extra.csv", from: nil, to: "missing"),
            .inputChanged(input: "models/churn", from: "tree-without-manifests:" + String(repeating: "a", count: 64),
                          to: "tree-without-manifests:" + String(repeating: "e", count: 64)),
            .inputChanged(input: "data/churn.csv", from: "git-blob:" + String(repeating: "b", count: 40), to: nil),
        ]
        #expect(new.differences(from: old) == expected)
    }

    @Test(arguments: singleChanges.indices)
    func aSingleChangeIsReportedAlone(_ i: Int) {
        let (what, changed) = Self.singleChanges[i]
        let differences = changed.differences(from: Self.base)
        if what == "input order" {
            // No reason can say "reordered": the planner falls back to "fingerprint changed".
            #expect(differences.isEmpty)
        } else if what == "param renamed" || what == "secret name renamed" || what == "input renamed" {
            #expect(differences.count == 2, "\(what): \(differences)")
        } else {
            #expect(differences.count == 1, "\(what): \(differences)")
        }
    }
}
