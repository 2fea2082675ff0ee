import { singleHostSuite } from './single-host-flow';

singleHostSuite('etcd');
