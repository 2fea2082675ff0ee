import { policySuite } from './policy-flow';

policySuite('embedded');
