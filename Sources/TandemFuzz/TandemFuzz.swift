import Foundation

#if TANDEM_LIBFUZZER
    import CFuzzDriver

    /// The harness this libFuzzer run drives (set before the driver starts).
    nonisolated(unsafe) var fuzzTarget: FuzzTarget = .msgpack
#endif

/// `tandem-fuzz TARGET [FILE|FOLDER…]`, TARGET one of `kv-frames`, `msgpack`, `request-fields`: in an ordinary
/// build, replays inputs (each run once), or with `--write-seeds DIR` writes the seed inputs made with Tandem's
/// encoders. Built by `scripts/fuzz.sh` (instrumented, with `-DTANDEM_LIBFUZZER`), the binary runs libFuzzer
/// instead: the arguments after TARGET are libFuzzer's (corpus folders, `-max_total_time=…`).
@main
struct TandemFuzz {
    static func main() {
        var args = CommandLine.arguments
        // libFuzzer runs itself again for some jobs (-merge=1) without the target: it then comes from the
        // environment this process set.
        let named = args.count >= 2 ? FuzzTarget(rawValue: args[1]) : nil
        let inherited = ProcessInfo.processInfo.environment["TANDEM_FUZZ_TARGET"].flatMap { FuzzTarget(rawValue: $0) }
        guard let target = named ?? inherited else {
            let names = FuzzTarget.allCases.map(\.rawValue).joined(separator: ", ")
            FileHandle.standardError.write(
                Data("usage: tandem-fuzz TARGET [ARGS...]; TARGET is one of \(names)\n".utf8))
            exit(2)
        }
        if named != nil { args.remove(at: 1) }
        setenv("TANDEM_FUZZ_TARGET", target.rawValue, 1)
        #if TANDEM_LIBFUZZER
            fuzzTarget = target
            var argc = Int32(args.count)
            var pointers: [UnsafeMutablePointer<CChar>?] = args.map { strdup($0) } + [nil]
            let code = pointers.withUnsafeMutableBufferPointer { buffer -> Int32 in
                var argv = buffer.baseAddress
                return LLVMFuzzerRunDriver(&argc, &argv) { data, size in
                    fuzzTarget.run(size == 0 ? [] : Array(UnsafeBufferPointer(start: data, count: size)))
                    return 0
                }
            }
            exit(code)
        #else
            replay(target, Array(args.dropFirst()))
        #endif
    }

    static func replay(_ target: FuzzTarget, _ paths: [String]) {
        if paths.first == "--write-seeds", paths.count == 2 {
            let dir = URL(fileURLWithPath: paths[1])
            try? FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
            for (name, bytes) in target.seeds {
                _ = FileManager.default.createFile(atPath: dir.appendingPathComponent(name).path, contents: Data(bytes))
            }
            print("wrote \(target.seeds.count) seeds to \(dir.path)")
            return
        }
        var count = 0
        for path in paths {
            var isDirectory: ObjCBool = false
            guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
                FileHandle.standardError.write(Data("tandem-fuzz: no such file or folder: \(path)\n".utf8))
                exit(1)
            }
            let files =
                isDirectory.boolValue
                ? ((try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []).sorted().map { path + "/" + $0 }
                : [path]
            for file in files {
                guard let data = FileManager.default.contents(atPath: file) else { continue }
                target.run(Array(data))
                count += 1
            }
        }
        print("\(target.rawValue): \(count) inputs replayed, none crashed")
    }
}
