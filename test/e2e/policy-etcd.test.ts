import { policySuite } from './policy-flow';

policySuite('etcd');
