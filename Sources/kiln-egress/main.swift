import Glibc
import KilnNet

// The sandbox's DNS answerer and Host/SNI proxy (KilnNet.EgressHelper, docs/net.md "Domains").
exit(EgressHelper.main(Array(CommandLine.arguments.dropFirst())))
