// swift-tools-version: 6.1
// The benchmark program: its own package, so users of the library never build it.
//
//   swift run --package-path Benchmarks -c release backstage-bench --help
import PackageDescription

// The Backstage package measured: this checkout, or another one named by BACKSTAGE_BENCH_ROOT
// (to compare two versions with the same program).
let backstageRoot = Context.environment["BACKSTAGE_BENCH_ROOT"] ?? ".."

let package = Package(
    name: "BackstageBenchmarks",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(name: "Backstage", path: backstageRoot),
        .package(url: "https://github.com/groue/GRDB.swift", from: "7.10.0"),
        .package(url: "https://github.com/vapor/postgres-nio", from: "1.33.2"),
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
    ],
    targets: [
        .executableTarget(
            name: "backstage-bench",
            dependencies: [
                .product(name: "Backstage", package: "Backstage"),
                .product(name: "BackstageSQLite", package: "Backstage"),
                .product(name: "BackstagePostgres", package: "Backstage"),
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Sources/BackstageBench"
        )
    ],
    swiftLanguageModes: [.v6]
)
